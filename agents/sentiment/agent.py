"""sentiment: how the customer feels, from Triton's sentiment model (lexicon + MiniLM prototypes)."""

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
        """One call to the sentiment model."""
        result = await self.sentiment([message.text], ctx)
        # An unexpected label or score from the model breaks the output schema: an error, never a guess.
        return SentimentOutput.model_validate({"label": result.labels[0], "score": round(result.scores[0], 4)})
