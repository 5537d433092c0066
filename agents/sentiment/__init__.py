"""sentiment agent: how a customer feels in a message."""

from __future__ import annotations

from agentmesh.agents.sentiment.agent import SentimentAgent, SentimentInput, SentimentOutput

__all__ = ["SentimentAgent", "SentimentInput", "SentimentOutput"]
