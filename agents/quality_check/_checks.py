"""Review rules that need no model: personal data, citations, tone and length, and the overall verdict."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentmesh.agents._support import find_pii, first_name, split_sentences
from agentmesh.agents._support._replies import is_template

__all__ = [
    "ASK_THRESHOLD",
    "CLAIM_THRESHOLD",
    "MAX_DRAFTS",
    "PARAGRAPH_THRESHOLD",
    "RELATED_INTENTS",
    "RELEVANCE_THRESHOLD",
    "Verdict",
    "ask_problems",
    "citation_problems",
    "cited_paragraphs",
    "claim_problems",
    "content_sentences",
    "customer_problems",
    "length_problems",
    "personal_data_problems",
    "pii_problems",
    "politeness_problems",
    "relevance_problems",
    "verdict",
]

# Relevance of a reply (MiniLM cosine) below which it is off-topic: its similarity to the ticket, or to the
# best retrieved article when that is higher (a reply in English to a Spanish ticket is compared with the
# English article that answers it). Replies built from the right articles score ~0.45-0.85; a reply about
# another topic ~0.1-0.25.
RELEVANCE_THRESHOLD = 0.35
# A cited paragraph below this is about something else: on the example tickets the responder's cited
# paragraphs score 0.46-0.82, a paragraph quoted from an unrelated article 0.0-0.3.
PARAGRAPH_THRESHOLD = 0.3
# Overlap of the ticket's and the reply content's intent distributions below which the reply answers
# another question (a cancellation reply to a double charge). Calibrated on the dev split only.
ASK_THRESHOLD = 0.15
# A stated sentence whose best similarity to a cited article's sentence is below this is not backed by
# it. Calibrated on the dev split only.
CLAIM_THRESHOLD = 0.6
# Intents whose answers legitimately overlap: a warranty claim (technical) ends in a repair or a refund.
# Kept narrow (calibrated on dev): wider pairs such as refund/shipping let another ticket's answer pass.
# A double charge (billing) answered with a cancellation is NOT related: the reply a team lead rejects.
RELATED_INTENTS = frozenset({frozenset({"refund", "technical"})})
# Drafts reviewed per ticket; a draft failing the last review is escalated to a person with its reasons.
MAX_DRAFTS = 3
_GREETING = re.compile(r"^\s*(hi|hello|dear|good (morning|afternoon|evening)|hey)\b", re.I)
_CLOSING = re.compile(
    r"\b(regards|sincerely|best wishes|thank you|thanks|happy to help|kind regards)\b", re.I
)
_RUDE = re.compile(
    r"\b(stupid|idiot\w*|dumb|shut up|calm down|your (own )?fault|obviously|as i already (said|told you)|"
    r"read the (manual|faq)|not our problem|whatever|deal with it)\b",
    re.I,
)
_MIN_WORDS, _MAX_WORDS = 20, 400


@dataclass(frozen=True)
class Verdict:
    """The review's outcome: pass/fail, a score in [0, 1], and actionable reasons for every failure."""

    passed: bool
    score: float
    reasons: list[str] = field(default_factory=list)


def pii_problems(reply: str) -> list[str]:
    """A reason per kind of personal data the reply contains (emails, phone numbers, card numbers)."""
    kinds = sorted({match.kind for match in find_pii(reply)})
    names = {"email": "an email address", "phone": "a phone number", "card": "a payment card number"}
    return [
        f"pii: the reply contains {names[kind]}; remove it (greet the customer by first name only)"
        for kind in kinds
    ]


def citation_problems(reply: str, citations: Sequence[str], retrieved: Sequence[str]) -> list[str]:
    """Reasons when the reply cites no retrieved article, or cites one that was not retrieved."""
    problems = []
    unknown = [c for c in citations if c not in retrieved]
    if unknown:
        problems.append(
            f"citation: {', '.join(unknown)} were not among the retrieved articles; cite only those"
        )
    if not any(c in retrieved for c in citations):
        available = ", ".join(retrieved) or "none were retrieved"
        problems.append(f"citation: the reply cites no retrieved article; quote and cite one of: {available}")
    elif not any(f"[{c}]" in reply or c in reply for c in citations):
        problems.append(
            "citation: the cited article ids do not appear in the reply text; mark them, e.g. [kb-...]"
        )
    return problems


def politeness_problems(reply: str) -> list[str]:
    """Reasons when the reply lacks a greeting or a courteous closing, or uses dismissive words."""
    problems = []
    if not _GREETING.search(reply):
        problems.append("politeness: start with a greeting such as 'Hi <first name>,'")
    if not _CLOSING.search(reply):
        problems.append("politeness: end with a courteous closing such as 'Kind regards'")
    if (match := _RUDE.search(reply)) is not None:
        problems.append(f"politeness: dismissive wording {match.group(0)!r}; rephrase respectfully")
    return problems


def length_problems(reply: str) -> list[str]:
    """Reasons when the reply is too short to help or too long to read."""
    words = len(reply.split())
    if words < _MIN_WORDS:
        return [f"length: the reply has {words} words; answer the question in at least {_MIN_WORDS}"]
    if words > _MAX_WORDS:
        return [f"length: the reply is too long ({words} words); keep it under {_MAX_WORDS}"]
    return []


def cited_paragraphs(reply: str, citations: Sequence[str]) -> list[str]:
    """The reply's paragraphs that carry a citation: the grounded content, checked one by one because the
    embedding model reads only the first ~128 tokens of the whole reply.
    """
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", reply) if p.strip()]
    return [p for p in paragraphs if any(c and c in p for c in citations)]


def relevance_problems(
    similarity: float,
    paragraph_similarities: Sequence[float] = (),
    threshold: float = RELEVANCE_THRESHOLD,
    paragraph_threshold: float = PARAGRAPH_THRESHOLD,
    paragraph_articles: Sequence[Sequence[str]] = (),
) -> list[str]:
    """A reason when the reply's similarity to the ticket is below ``threshold``, and one per cited
    paragraph (numbered from 1) below ``paragraph_threshold``, naming the articles it cites
    (``paragraph_articles``, per paragraph) so that the redraft can leave them out.
    """
    problems = []
    if similarity < threshold:
        problems.append(
            f"relevance: the reply is off-topic for this ticket (similarity {similarity:.2f} < {threshold:.2f}); "
            "answer the customer's actual question using the retrieved articles"
        )
    for number, value in enumerate(paragraph_similarities, 1):
        if value < paragraph_threshold:
            cited = paragraph_articles[number - 1] if number <= len(paragraph_articles) else ()
            which = f" ({', '.join(f'[{c}]' for c in cited)})" if cited else ""
            problems.append(
                f"relevance: cited paragraph {number}{which} is off-topic for this ticket (similarity "
                f"{value:.2f} < {paragraph_threshold:.2f}); drop it or quote an article that answers the question"
            )
    return problems


def verdict(similarity: float, problems: Sequence[str], threshold: float = RELEVANCE_THRESHOLD) -> Verdict:
    """Pass only without problems. Score: relevance 0.3 (scaled to the threshold), then 0.1 each for
    personal data, citations, politeness, length, answering the ask, backed claims and the right customer.
    """
    relevance = max(0.0, min(1.0, similarity / (threshold * 1.5)))
    score = 0.3 * relevance
    for area in ("pii", "citation", "politeness", "length", "ask", "claim", "customer"):
        if not any(p.startswith(f"{area}:") for p in problems):
            score += 0.1
    return Verdict(passed=not problems, score=round(score, 4), reasons=list(problems))


# --- the ask, claims, the customer ------------------------------------------------------------------------

_CITATION_MARK = re.compile(r'\s*\(see "[^"]*" \[[^\]]*\]\)|\s*\[[A-Za-z0-9_.-]+\]')
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_ORDER_ID = re.compile(r"\b[A-Z]{2}-\d{4,}\b")
_GREETING_NAME = re.compile(r"^\s*(?:hi|hello|dear|hey)\s+([^\s,!]+)", re.I)


def content_sentences(reply: str) -> list[str]:
    """The reply's sentences that state something (not greeting, fixed wording or signature), with
    citation marks removed.
    """
    sentences = []
    for sentence in split_sentences(reply):
        cleaned = _CITATION_MARK.sub("", sentence).strip()
        if cleaned and not is_template(cleaned) and len(cleaned.split()) >= 3:
            sentences.append(cleaned)
    return sentences


def claim_problems(
    sentences: Sequence[str], support: Sequence[float], sources: str, ticket: str, threshold: float
) -> list[str]:
    """A reason per stated sentence that the cited articles do not back: its best similarity to a cited
    article's sentence (``support``) is below ``threshold`` and it is not quoted from them, or it gives a
    number (an amount, a time, a count) that neither the cited articles nor the ticket contain.
    """
    problems = []
    known = set(_NUMBER.findall(sources)) | set(_NUMBER.findall(ticket))
    flat_sources = " ".join(sources.split())
    for sentence, best in zip(sentences, support, strict=True):
        quoted = " ".join(sentence.split()) in flat_sources
        numbers = [n for n in _NUMBER.findall(sentence) if n not in known]
        if numbers and not quoted:
            problems.append(
                f"claim: {_short(sentence)!r} states {', '.join(numbers)}, which no cited article says; "
                "quote the article's own figures"
            )
        elif not quoted and best < threshold:
            problems.append(
                f"claim: {_short(sentence)!r} is not backed by any cited article (support {best:.2f} < "
                f"{threshold:.2f}); quote and cite the article that says it, or drop it"
            )
    return problems


def ask_problems(
    ticket: Mapping[str, float], reply: Mapping[str, float], threshold: float, cites_best: bool = True
) -> list[str]:
    """A reason when the reply's content answers another kind of question than the ticket asks: their
    most likely intents differ and are not :data:`RELATED_INTENTS`, and either the overlap of the two intent
    distributions (sum of the smaller probability per intent) is below ``threshold`` or the reply does not
    cite the best retrieved article (``cites_best`` false: it answers from a weaker match, so a partial
    overlap of the distributions is no evidence that it answers this ticket).
    """
    overlap = sum(min(p, reply.get(intent, 0.0)) for intent, p in ticket.items())
    asked = max(ticket, key=lambda i: ticket[i])
    answered = max(reply, key=lambda i: reply[i]) if reply else "nothing"
    # A reply whose content reads as "other" (how to reach us, thanks) answers nothing else by mistake.
    related = asked == answered or answered == "other" or {asked, answered} in RELATED_INTENTS
    if related or (overlap >= threshold and cites_best):
        return []
    detail = (
        f"overlap {overlap:.2f} < {threshold:.2f}"
        if overlap < threshold
        else f"overlap {overlap:.2f}, quoting a weaker match than the best retrieved article"
    )
    return [
        f"ask: the ticket asks about {asked!r} but the reply answers {answered!r} ({detail}); answer the "
        "customer's actual question"
    ]


def customer_problems(reply: str, customer: Mapping[str, Any] | None, ticket: str) -> list[str]:
    """Reasons when the reply is addressed to someone else: it greets another name than the customer's, or
    names an order that is neither the customer's nor in the ticket.
    """
    if not customer:
        return []
    problems = []
    name = first_name(str(customer.get("name", "")))
    greeted = _GREETING_NAME.match(reply)
    if name and greeted and greeted.group(1).strip(".").lower() not in {name.lower(), "there"}:
        problems.append(
            f"customer: the reply greets {greeted.group(1)!r} but the ticket is from {name!r}; "
            "address this customer"
        )
    theirs = {str(o.get("order_id", "")) for o in customer.get("orders") or [] if isinstance(o, Mapping)}
    foreign = [o for o in dict.fromkeys(_ORDER_ID.findall(reply)) if o not in theirs and o not in ticket]
    if foreign:
        problems.append(
            f"customer: the reply mentions order {', '.join(foreign)}, which is not this customer's; "
            "mention only their own orders"
        )
    return problems


def personal_data_problems(
    reply: str, customer: Mapping[str, Any] | None, ticket: str, allowed: bool = False
) -> list[str]:
    """Reasons per kind of personal data in the reply: another customer's (anything that is neither in
    the customer's record nor in their ticket) always fails; the customer's own fails unless ``allowed``.
    """
    own = {_digits_or_lower(str(v)) for v in (customer or {}).values() if isinstance(v, str)}
    own |= {_digits_or_lower(m.text) for m in find_pii(ticket)}
    names = {"email": "an email address", "phone": "a phone number", "card": "a payment card number"}
    problems = []
    for kind in sorted({m.kind for m in find_pii(reply) if _digits_or_lower(m.text) not in own}):
        problems.append(
            f"pii: the reply contains {names[kind]} of someone other than this customer; remove it"
        )
    if not allowed:
        for kind in sorted({m.kind for m in find_pii(reply) if _digits_or_lower(m.text) in own}):
            problems.append(
                f"pii: the reply contains {names[kind]}; remove it (greet the customer by first name only)"
            )
    return problems


def _digits_or_lower(text: str) -> str:
    digits = re.sub(r"\D", "", text)
    return digits if "@" not in text and len(digits) >= 7 else text.strip().lower()


def _short(sentence: str) -> str:
    return sentence if len(sentence) <= 80 else sentence[:77] + "..."
