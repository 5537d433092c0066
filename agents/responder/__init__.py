"""responder agent: drafts cited replies from knowledge-base articles (generative or extractive)."""

from __future__ import annotations

from agentmesh.agents.responder._compose import ReplyPlan, compose_reply, plan_from_feedback, select_sentences
from agentmesh.agents.responder.agent import (
    DraftInput,
    DraftOutput,
    ResponderAgent,
    build_prompt,
    finish_generated,
)

__all__ = [
    "DraftInput",
    "DraftOutput",
    "ReplyPlan",
    "ResponderAgent",
    "build_prompt",
    "compose_reply",
    "finish_generated",
    "plan_from_feedback",
    "select_sentences",
]
