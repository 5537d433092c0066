"""sentiment: how the customer feels, from Triton's sentiment model (VADER, multilingual cues and MiniLM
prototypes, read by a head fitted on the dev split of the support evaluation set)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agentmesh.agent import AgentInfo, SkillContext, skill
from agentmesh.agents._support import TritonAgent

__all__ = ["SentimentAgent", "SentimentInput", "SentimentOutput"]


class SentimentInput(BaseModel):
    """A customer's message."""

    text: str = Field(min_length=1, max_length=20_000, description="The text to score.")


class SentimentOutput(BaseModel):
    """Polarity of the message."""

    label: Literal["negative", "neutral", "positive"]
    score: float = Field(ge=-1.0, le=1.0, description="-1 very unhappy .. +1 very happy.")


class SentimentAgent(TritonAgent):
    """Scores the sentiment of customer messages on Triton."""

    card = AgentInfo(
        name="sentiment",
        namespace="support",
        version="1.0.0",
        purpose="sentiment-analysis",
        description=(
            "Scores how a customer feels in a message, from -1 (angry, frustrated) to +1 (thankful, happy), "
            "with a negative / neutral / positive label."
        ),
        policies=("pii:none",),
        labels={"domain": "customer-service", "model": "sentiment"},
        owner="support-platform",
    )

    @skill(description="Score a message's sentiment: label negative/neutral/positive and a score in [-1, 1].")
    async def score_sentiment(self, message: SentimentInput, ctx: SkillContext) -> SentimentOutput:
        """The model's score and label of the whole message."""
        score, label = await self.message_sentiment(message.text, ctx)
        return SentimentOutput(label=label, score=round(score, 4))  # type: ignore[arg-type]
