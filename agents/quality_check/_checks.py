"""Review rules that need no model: personal data, citations, tone and length, and the overall verdict."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentmesh.agents._support import find_pii

__all__ = [
    "PARAGRAPH_THRESHOLD",
    "RELEVANCE_THRESHOLD",
    "Verdict",
    "citation_problems",
    "cited_paragraphs",
    "length_problems",
    "pii_problems",
    "politeness_problems",
    "relevance_problems",
    "verdict",
]

# Cosine similarity (MiniLM) of reply and ticket below which a reply is considered off-topic. Replies built
# from the right articles score ~0.45-0.85 on the example tickets; a reply about another topic ~0.1-0.25.
RELEVANCE_THRESHOLD = 0.35
# A cited paragraph below this is about something else: on the example tickets the responder's cited
# paragraphs score 0.46-0.82, a paragraph quoted from an unrelated article 0.0-0.3.
PARAGRAPH_THRESHOLD = 0.3
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
) -> list[str]:
    """A reason when the reply's similarity to the ticket is below ``threshold``, and one per cited
    paragraph (numbered from 1) below ``paragraph_threshold``.
    """
    problems = []
    if similarity < threshold:
        problems.append(
            f"relevance: the reply is off-topic for this ticket (similarity {similarity:.2f} < {threshold:.2f}); "
            "answer the customer's actual question using the retrieved articles"
        )
    for number, value in enumerate(paragraph_similarities, 1):
        if value < paragraph_threshold:
            problems.append(
                f"relevance: cited paragraph {number} is off-topic for this ticket (similarity {value:.2f} < "
                f"{paragraph_threshold:.2f}); drop it or quote an article that answers the question"
            )
    return problems


def verdict(similarity: float, problems: Sequence[str], threshold: float = RELEVANCE_THRESHOLD) -> Verdict:
    """Pass only without problems. Score: relevance 0.4 (scaled to the threshold), then 0.15 each for
    personal data, citations, politeness and length being fine.
    """
    relevance = max(0.0, min(1.0, similarity / (threshold * 1.5)))
    score = 0.4 * relevance
    for area in ("pii", "citation", "politeness", "length"):
        if not any(p.startswith(f"{area}:") for p in problems):
            score += 0.15
    return Verdict(passed=not problems, score=round(score, 4), reasons=list(problems))
