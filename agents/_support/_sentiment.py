"""Message-level sentiment from the model's scores of the whole message and of each sentence."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["NEUTRAL_BAND", "blend_sentiment", "sentiment_label"]

# Scores within ±NEUTRAL_BAND are neutral (the sentiment model's own band).
NEUTRAL_BAND = 0.2


def sentiment_label(score: float) -> str:
    """negative / neutral / positive for a score in [-1, 1]."""
    return "negative" if score <= -NEUTRAL_BAND else "positive" if score >= NEUTRAL_BAND else "neutral"


def blend_sentiment(whole: float, sentences: Sequence[float]) -> float:
    """Half the whole message's score, half its most polar sentence's: a furious sentence in an otherwise
    factual message still counts, and one polite phrase does not cancel a complaint.
    """
    if len(sentences) < 2:
        return max(-1.0, min(1.0, whole))
    strongest = max(sentences, key=abs)
    return max(-1.0, min(1.0, 0.5 * whole + 0.5 * strongest))
