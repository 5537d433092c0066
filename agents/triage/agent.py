"""triage: a ticket's intent (embedding similarity to prototype sentences) and priority."""

from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from agentmesh.agent import AgentInfo, SkillContext, skill
from agentmesh.agents._support import Ticket, TritonAgent, split_sentences
from agentmesh.agents._support._gloss import for_embedding, for_matching
from agentmesh.agents._support._keywords import PhraseMatcher
from agentmesh.agents._support._triton import MAX_SENTENCES
from agentmesh.agents.triage._rules import (
    INTENTS,
    Intent,
    assess_priority,
    cue_bonus,
    intent_scores,
    load_cues,
    load_prototypes,
    no_signal,
    nothing_to_go_on,
)

__all__ = ["TriageAgent", "TriageOutput"]

Priority = Literal["low", "normal", "high", "urgent"]


class TriageOutput(BaseModel):
    """What the ticket is about and how soon it needs an answer."""

    intent: Intent
    priority: Priority
    confidence: float = Field(ge=0.0, le=1.0, description="Probability of the chosen intent.")
    scores: dict[str, float] = Field(description="Probability of every intent.")
    reasons: list[str] = Field(description="Why this intent and priority, in words.")


class TriageAgent(TritonAgent):
    """Classifies a ticket by comparing its sentences with labelled prototype sentences through MiniLM."""

    card = AgentInfo(
        name="triage",
        namespace="support",
        version="1.0.0",
        purpose="ticket-triage",
        description=(
            "Classifies a customer-support ticket's intent (refund, billing, shipping, technical, account, "
            "cancellation, privacy, plans, data, outage, integrations, other) and priority (low, normal, high, "
            "urgent) with the reasons; English, Spanish, German and French tickets."
        ),
        policies=("pii:none",),
        labels={"domain": "customer-service", "model": "embedding"},
        owner="support-platform",
    )

    _prototypes: npt.NDArray[np.float32]
    _owners: npt.NDArray[np.int_]
    _cues: dict[str, PhraseMatcher]

    async def prepare(self, ctx: SkillContext | None) -> None:
        """Embed the prototype sentences once."""
        prototypes = load_prototypes()
        sentences = [s for intent in INTENTS for s in prototypes[intent]]
        self._owners = np.array([i for i, intent in enumerate(INTENTS) for _ in prototypes[intent]])
        self._cues = load_cues()
        self._prototypes = await self.embed_in_batches(sentences, ctx)

    @skill(description="Classify a support ticket's intent and priority, with confidence and reasons.")
    async def classify_ticket(self, ticket: Ticket, ctx: SkillContext) -> TriageOutput:
        """Intent from segment-to-prototype similarities; priority from intent, sentiment and cues."""
        await self.ensure_prepared(ctx)
        whole = ticket.as_text()
        segments = [whole, *([ticket.subject.strip()] if ticket.subject.strip() else [])]
        segments += split_sentences(ticket.text)[:MAX_SENTENCES]
        embedded, (score, _) = await asyncio.gather(
            self.embed([for_embedding(s) for s in segments], ctx), self.message_sentiment(ticket.text, ctx)
        )
        bonus = cue_bonus(for_matching(whole), self._cues, sentiment=score)
        result = intent_scores(embedded.embeddings @ self._prototypes.T, self._owners, bonus=bonus)
        runner_up = sorted(result.scores.items(), key=lambda item: -item[1])[1]
        said = f"intent {result.intent!r} at {result.confidence:.0%} (next: {runner_up[0]!r} at {runner_up[1]:.0%})"
        # Emoji, digits, punctuation or an uncovered script embed as unknown tokens, whose nearest prototype
        # is arbitrary ("privacy" for most): the catch-all intent, with the confidence of no evidence.
        if (why := no_signal(whole, result, bonus)) is not None:
            guess = f"the model's nearest intent was {result.intent!r} at {result.confidence:.0%}"
            result = nothing_to_go_on()
            said = f"intent {result.intent!r} at {result.confidence:.0%}: {why}; {guess}"
        priority, reasons = assess_priority(result.intent, score, whole)
        reasons.insert(0, said)
        return TriageOutput(
            intent=result.intent,  # type: ignore[arg-type]
            priority=priority,  # type: ignore[arg-type]
            confidence=round(result.confidence, 4),
            scores=result.scores,
            reasons=reasons,
        )
