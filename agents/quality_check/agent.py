"""quality-check: reviews a draft reply for relevance, the ask, backed claims, citations, personal data,
the right customer and tone; after the last allowed draft, a failing one is escalated to a person.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from agentmesh.agent import AgentInfo, SkillContext, skill
from agentmesh.agents._support import Article, Ticket, TritonAgent, find_injection, split_sentences
from agentmesh.agents._support._gloss import for_embedding, for_matching
from agentmesh.agents._support._keywords import PhraseMatcher
from agentmesh.agents._support._triton import MAX_SENTENCES
from agentmesh.agents.quality_check._checks import (
    ASK_THRESHOLD,
    CLAIM_THRESHOLD,
    MAX_DRAFTS,
    ask_problems,
    citation_problems,
    cited_paragraphs,
    claim_problems,
    content_sentences,
    customer_problems,
    length_problems,
    personal_data_problems,
    politeness_problems,
    relevance_problems,
    verdict,
)
from agentmesh.agents.triage._rules import INTENTS, cue_bonus, intent_scores, load_cues, load_prototypes

__all__ = ["CheckInput", "CheckOutput", "QualityCheckAgent"]

# A holding reply (no article answers the ticket) is not compared with the ticket; it scores as relevant.
_HOLDING_RELEVANCE = 1.0


class CheckInput(BaseModel):
    """A draft reply, the ticket it answers, the articles that were retrieved for it and, optionally, the
    customer it is for and which draft this is.
    """

    ticket: Ticket
    reply: str = Field(max_length=20_000)
    citations: list[str] = Field(default_factory=list)
    articles: list[Article] = Field(default_factory=list, max_length=20)
    customer: dict[str, Any] | None = Field(
        default=None, description="crm's record of the customer the reply is for (name, orders, contacts)."
    )
    pii_allowed: bool = Field(
        default=False, description="The customer's own personal data may appear (they asked for it)."
    )
    attempt: int = Field(default=1, ge=1, le=100, description="Which draft for this ticket (1 = first).")
    escalated: bool = Field(
        default=False, description="The responder's escalate flag: a holding reply for a person to take over."
    )


class CheckOutput(BaseModel):
    """The review: a failing draft carries reasons the responder can act on."""

    passed: bool
    score: float = Field(ge=0.0, le=1.0)
    reasons: list[str]
    relevance: float = Field(
        description="Cosine similarity of the reply to the ticket, or to the best retrieved article if higher."
    )
    action: Literal["send", "revise", "escalate"] = Field(
        default="send",
        description=(
            "send: the draft may go out; revise: redraft with the reasons as feedback; escalate: a person must "
            "answer (the draft failed its last allowed review, or no article answers the ticket)."
        ),
    )


class QualityCheckAgent(TritonAgent):
    """Scores drafts before they reach a customer."""

    card = AgentInfo(
        name="quality-check",
        namespace="support",
        version="1.1.0",
        purpose="reply-review",
        description=(
            "Reviews a draft support reply: answers the ticket's actual ask, every claim backed by a cited "
            "article, leaks no personal data (never another customer's), addressed to the right customer, "
            "polite; returns actionable reasons, and says to escalate after the last allowed draft."
        ),
        policies=("pii:none",),
        labels={"domain": "customer-service", "model": "embedding"},
        owner="support-platform",
    )

    _prototypes: npt.NDArray[np.float32]
    _owners: npt.NDArray[np.int_]
    _cues: dict[str, PhraseMatcher]

    async def prepare(self, ctx: SkillContext | None) -> None:
        """Embed triage's intent prototypes once (the ask check compares intents of ticket and reply)."""
        prototypes = load_prototypes()
        self._owners = np.array([i for i, intent in enumerate(INTENTS) for _ in prototypes[intent]])
        self._cues = load_cues()
        self._prototypes = await self.embed_in_batches([s for i in INTENTS for s in prototypes[i]], ctx)

    @skill(
        description=(
            "Check a draft reply (relevance, the ask, backed claims, citations, no PII, right customer, "
            "politeness); reasons when it fails, and the action: send, revise or escalate."
        )
    )
    async def check_reply(self, request: CheckInput, ctx: SkillContext) -> CheckOutput:
        """Rules first, then the similarities through Triton (one call; article sentences cached)."""
        await self.ensure_prepared(ctx)
        reply = request.reply.strip()
        ticket_text = request.ticket.as_text()
        retrieved = [a.article_id for a in request.articles]
        # A ticket addressing an assistant's instructions is a person's to answer, whatever was retrieved
        # (the responder escalates it; a draft that answers it anyway fails as a holding reply with claims).
        injected = find_injection(ticket_text)
        holding = request.escalated or not request.articles or injected is not None
        problems = [
            *personal_data_problems(reply, request.customer, ticket_text, request.pii_allowed),
            *customer_problems(reply, request.customer, ticket_text),
            *(
                []
                if holding and not request.citations
                else citation_problems(reply, request.citations, retrieved)
            ),
            *politeness_problems(reply),
            *length_problems(reply),
        ]
        similarity = 0.0
        if reply and not holding:
            similarity, more = await self._model_checks(request, reply, ctx)
            problems = more + problems
        elif holding and (stated := content_sentences(reply)):
            problems.append(
                f"claim: a holding reply without articles states {stated[0]!r}; say only that a person "
                "will answer"
            )
        result = verdict(_HOLDING_RELEVANCE if holding else similarity, problems)
        reasons = list(result.reasons)
        action: Literal["send", "revise", "escalate"] = "send"
        if holding:
            # The holding reply may go out (if it passed), but a person must answer the ticket.
            action = "escalate"
            reasons.append(
                f"escalate: the ticket addresses an assistant's instructions ({injected!r}); a person must reply"
                if injected
                else "escalate: no knowledge-base article answers this ticket; a person must reply"
            )
        elif not result.passed and request.attempt >= MAX_DRAFTS:
            action = "escalate"
            reasons.append(f"escalate: draft {request.attempt} of {MAX_DRAFTS} still fails the review")
        elif not result.passed:
            action = "revise"
        return CheckOutput(
            passed=result.passed,
            score=result.score,
            reasons=reasons,
            relevance=round(similarity, 4),
            action=action,
        )

    async def _model_checks(
        self, request: CheckInput, reply: str, ctx: SkillContext
    ) -> tuple[float, list[str]]:
        ticket_text = request.ticket.as_text()
        paragraphs = cited_paragraphs(reply, request.citations)
        stated = content_sentences(reply)
        cited = [a for a in request.articles if a.article_id in request.citations]
        source_sentences = [s for a in cited for s in split_sentences(a.body or a.snippet)]
        segments = [ticket_text, *([request.ticket.subject] if request.ticket.subject.strip() else [])]
        segments += split_sentences(request.ticket.text)[:MAX_SENTENCES]
        content = " ".join(stated) or reply
        # The best retrieved article (kb-search ranks them): the English reference for the ticket's topic.
        top = request.articles[0]
        reference = f"{top.title}. {' '.join((top.body or top.snippet).split())}"
        fresh = [*(for_embedding(s) for s in segments), reference, reply, *paragraphs, content, *stated]
        embedded = await self.embed_reusing(fresh, source_sentences, ctx)
        vectors = embedded.embeddings
        ticket_vectors = vectors[: len(segments)]
        reference_vector = vectors[len(segments)]
        at = len(segments) + 1
        reply_vector, paragraph_vectors = vectors[at], vectors[at + 1 : at + 1 + len(paragraphs)]
        at += 1 + len(paragraphs)
        content_vector, stated_vectors = vectors[at], vectors[at + 1 : at + 1 + len(stated)]
        source_vectors = vectors[at + 1 + len(stated) :]
        anchors = np.vstack([ticket_vectors[0], reference_vector])
        similarity = float((anchors @ reply_vector).max())
        problems = relevance_problems(
            similarity,
            [float((anchors @ v).max()) for v in paragraph_vectors],
            paragraph_articles=[[c for c in request.citations if f"[{c}]" in p] for p in paragraphs],
        )
        asked = intent_scores(
            ticket_vectors @ self._prototypes.T,
            self._owners,
            bonus=cue_bonus(for_matching(ticket_text), self._cues),
        )
        answer_rows = np.vstack([content_vector[None, :], stated_vectors])
        answered = intent_scores(answer_rows @ self._prototypes.T, self._owners)
        problems += ask_problems(
            asked.scores, answered.scores, ASK_THRESHOLD, top.article_id in request.citations
        )
        support = (
            (stated_vectors @ source_vectors.T).max(axis=1).tolist()
            if len(source_vectors) and len(stated)
            else [0.0] * len(stated)
        )
        sources = " ".join(a.body or a.snippet for a in cited)
        problems += claim_problems(stated, support, sources, ticket_text, CLAIM_THRESHOLD)
        return similarity, problems
