"""Extractive replies without any model call: candidate sentences, their selection, and the reply text."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agentmesh.agents._support import Article, find_pii, redact_pii, split_sentences
from agentmesh.agents._support._replies import CLOSING, ESCALATION, SIGNATURE, SORRY, TOPICS

__all__ = [
    "SIGNATURE",
    "Candidate",
    "ReplyPlan",
    "candidate_sentences",
    "compose_escalation",
    "compose_reply",
    "customer_context",
    "plan_from_feedback",
    "quotable_articles",
    "select_sentences",
    "varied_plans",
]

_ORDER_STATUS = {
    "delivered": ", which our records show as delivered",
    "in_transit": ", which is on its way with the carrier",
    "processing": ", which has not been dispatched yet",
    "cancelled": ", which was cancelled",
}
# Sentences shorter than this say too little to answer anything on their own.
_MIN_WORDS = 6
_ARTICLE_MARK = re.compile(r"\[([A-Za-z0-9_.-]+)\]")


@dataclass(frozen=True)
class Candidate:
    """A sentence that may be quoted, and the article it comes from."""

    article_id: str
    article_rank: int  # 0 = the best retrieved article
    text: str


@dataclass(frozen=True)
class ReplyPlan:
    """How to build the reply; quality_check feedback changes it on regeneration."""

    sentences: int = 3
    min_similarity: float = 0.25
    restate_subject: bool = False
    apologise: bool = True
    cite_top_article: bool = True
    use_customer: bool = True  # greet by name and mention the order or plan from the customer's record
    only_top_article: bool = False  # quote only the best article (the others did not answer the ask)
    exclude: frozenset[str] = frozenset()  # articles a review found off-topic for this ticket: not quoted


def plan_from_feedback(feedback: Sequence[str], base: ReplyPlan | None = None) -> ReplyPlan:
    """A plan that answers quality_check's reasons, starting from ``base`` (the intent's usual plan): the
    whole reply off-topic → more sentences, a lower similarity bar and the subject restated; one cited
    paragraph off-topic → only sentences close to the ticket; not answering the ask → only the best
    article, subject restated; an unsupported claim → only sentences close to the ticket; the wrong
    customer or their data → nothing from the customer record; too long → fewer sentences; a cited paragraph
    off-topic that names its articles (``[kb-...]``) → those are left out and only the best article left is
    quoted. Any other
    reason still changes the draft (the subject is restated), so a regenerated draft never repeats a
    rejected one. A citation is always made and PII always redacted, and the greeting and closing are
    always there.
    """
    plan = base or ReplyPlan()
    text = " ".join(feedback).lower()
    if not text:
        return plan
    plan = dataclasses.replace(plan, restate_subject=True)
    if "cited paragraph" in text or "claim:" in text:
        plan = dataclasses.replace(plan, min_similarity=max(plan.min_similarity, 0.45))
    off_topic = {
        article
        for reason in feedback
        if "cited paragraph" in reason.lower()
        for article in _ARTICLE_MARK.findall(reason)
    }
    if off_topic:
        # The review sees one draft at a time: quoting the next weaker article instead would only trade one
        # off-topic paragraph for another, so the redraft keeps to the best article that is left.
        plan = dataclasses.replace(plan, exclude=plan.exclude | off_topic, only_top_article=True)
    if "the reply is off-topic" in text:
        plan = dataclasses.replace(plan, sentences=max(plan.sentences, 5), min_similarity=0.15)
    if "ask:" in text:
        plan = dataclasses.replace(plan, only_top_article=True, sentences=max(plan.sentences, 3))
    if "customer:" in text or "pii:" in text:
        plan = dataclasses.replace(plan, use_customer=False)
    if "too long" in text:
        plan = dataclasses.replace(plan, sentences=2)
    return plan


def varied_plans(plan: ReplyPlan) -> list[ReplyPlan]:
    """Other plans to try, in order, when ``plan`` reproduced a rejected draft word for word: a wider quote
    (one more sentence, a lower bar), the best article alone or all confident ones, the customer's record
    left out or used, a shorter quote."""
    return [
        dataclasses.replace(
            plan, sentences=plan.sentences + 1, min_similarity=min(plan.min_similarity, 0.15)
        ),
        dataclasses.replace(plan, only_top_article=not plan.only_top_article),
        dataclasses.replace(plan, use_customer=not plan.use_customer),
        dataclasses.replace(
            plan, sentences=max(1, plan.sentences - 1), restate_subject=not plan.restate_subject
        ),
    ]


# How far below the best retrieved article another may score and still be quoted beside it.
SECONDARY_MARGIN = 0.3

def quotable_articles(articles: Sequence[Article], plan: ReplyPlan, floor: float) -> list[Article]:
    """The retrieved articles a reply may quote: the best one always (unless a review excluded it and
    another is left); the others only when kb-search scored them at or above ``floor`` on their own (an
    article below its confidence floor would not have been returned alone, so it answers something else)
    and within :data:`SECONDARY_MARGIN` of the best, and none a review found off-topic. Unscored articles (score 0, e.g. chosen by a person) all count.
    """
    if not articles:
        return []
    kept = [a for a in articles if a.article_id not in plan.exclude] or list(articles[:1])
    if plan.only_top_article:
        return kept[:1]
    scored = any(a.score > 0 for a in kept)
    # Far below the best (0.45 beside 0.96) an article matched a side word of the ticket ("order"), not its ask.
    bar = max(floor, kept[0].score - SECONDARY_MARGIN)
    return [kept[0], *(a for a in kept[1:] if not scored or a.score >= bar)]


def candidate_sentences(articles: Sequence[Article]) -> list[Candidate]:
    """Quotable sentences of the articles (their body if given, else their snippet), without personal data."""
    seen: set[str] = set()
    candidates = []
    for rank, article in enumerate(articles):
        for sentence in split_sentences(article.body or article.snippet):
            if len(sentence.split()) < _MIN_WORDS or sentence in seen or find_pii(sentence):
                continue
            seen.add(sentence)
            candidates.append(Candidate(article.article_id, rank, sentence))
    return candidates


def select_sentences(
    ticket_similarity: npt.NDArray[np.floating[Any]],
    sentence_vectors: npt.NDArray[np.float32],
    candidates: Sequence[Candidate],
    plan: ReplyPlan,
) -> list[int]:
    """Indices of the sentences to quote: most similar to the ticket first, skipping near-duplicates of a
    chosen sentence; the best article contributes at least one when ``plan.cite_top_article``.
    """
    order = [int(i) for i in np.argsort(-ticket_similarity, kind="stable")]
    chosen: list[int] = []
    for index in order:
        if len(chosen) >= plan.sentences:
            break
        if ticket_similarity[index] < plan.min_similarity and chosen:
            break
        if any(float(sentence_vectors[index] @ sentence_vectors[c]) > 0.85 for c in chosen):
            continue
        chosen.append(index)
    if plan.cite_top_article and candidates and not any(candidates[i].article_rank == 0 for i in chosen):
        top = [i for i in order if candidates[i].article_rank == 0]
        if top:
            chosen = [*chosen[: max(0, plan.sentences - 1)], top[0]]
    return chosen


def customer_context(customer: Mapping[str, Any] | None, ticket_text: str, intent: str) -> str:
    """One sentence from the customer's record that shows we looked: the order the ticket names (or, for
    refund and shipping questions, the latest order) and its status, or the plan for a cancellation.
    Order ids, items and plans are not personal data; contact fields are never used.
    """
    if not customer:
        return ""
    orders = [o for o in customer.get("orders") or [] if isinstance(o, Mapping) and o.get("order_id")]
    named = [o for o in orders if str(o["order_id"]).lower() in ticket_text.lower()]
    order = named[0] if named else (orders[0] if orders and intent in ("refund", "shipping") else None)
    if order is not None:
        status = _ORDER_STATUS.get(str(order.get("status", "")), "")
        item = f" ({order['item']})" if order.get("item") else ""
        return f"I can see your order {order['order_id']}{item}{status}."
    plan = str(customer.get("plan", ""))
    if intent == "cancellation" and plan.startswith("plus"):
        period = plan.removeprefix("plus").strip("-")
        return f"I can see you are on the Northwind Plus{' ' + period if period else ''} plan."
    return ""


def compose_reply(
    *,
    first_name: str,
    intent: str,
    subject: str,
    quoted: Sequence[Candidate],
    titles: dict[str, str],
    plan: ReplyPlan,
    context: str = "",
) -> tuple[str, list[str]]:
    """The reply text and the ids of the articles it cites (in order of first use)."""
    greeting = f"Hi {first_name}," if first_name and plan.use_customer else "Hello,"
    context = context if plan.use_customer else ""
    topic = TOPICS.get(intent)
    opening = f"Thank you for getting in touch {topic}." if topic else "Thank you for your message."
    if intent == "other":
        opening = "Thank you for taking the time to write to us, we really appreciate it."
    lines = [opening]
    if plan.apologise and intent in SORRY:
        lines.append(SORRY[intent])
    if context:
        lines.append(context)
    if plan.restate_subject and subject.strip():
        lines.append(f'You asked about "{_clean(subject)}", so here is what applies to your case.')
    body: list[str] = []
    citations: list[str] = []
    # Group quoted sentences per article, each group ending with its citation.
    for article_id in dict.fromkeys(c.article_id for c in quoted):
        sentences = " ".join(c.text for c in quoted if c.article_id == article_id)
        title = titles.get(article_id, article_id)
        body.append(f'{sentences} (see "{title}" [{article_id}])')
        citations.append(article_id)
    reply = "\n\n".join([greeting, " ".join(lines), *body, CLOSING, SIGNATURE])
    return redact_pii(reply), citations


def compose_escalation(*, first_name: str, intent: str) -> str:
    """The holding reply when no article answers the ticket: thanks, a person takes over, no claims."""
    greeting = f"Hi {first_name}," if first_name else "Hello,"
    topic = TOPICS.get(intent)
    opening = f"Thank you for getting in touch {topic}." if topic else "Thank you for your message."
    return "\n\n".join([greeting, f"{opening} {ESCALATION}", CLOSING, SIGNATURE])


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", redact_pii(text)).strip().strip('"')[:120]
