"""Message-level sentiment from the model's scores of the whole message and of each sentence."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["NEGATIVE_AT", "POSITIVE_AT", "blend_sentiment", "sentiment_label"]

# A message scoring at or below NEGATIVE_AT is negative, at or above POSITIVE_AT positive, neutral between.
# Calibrated with the sentiment model's blend on the dev split of the evaluation set only.
NEGATIVE_AT = -0.392
POSITIVE_AT = 0.448


def sentiment_label(score: float) -> str:
    """negative / neutral / positive for a message score in [-1, 1]."""
    return "negative" if score <= NEGATIVE_AT else "positive" if score >= POSITIVE_AT else "neutral"


def blend_sentiment(whole: float, sentences: Sequence[float]) -> float:
    """Half the whole message's score, half its most polar sentence's: a furious sentence in an otherwise
    factual message still counts, and one polite phrase does not cancel a complaint.
    """
    if len(sentences) < 2:
        return max(-1.0, min(1.0, whole))
    strongest = max(sentences, key=abs)
    return max(-1.0, min(1.0, 0.5 * whole + 0.5 * strongest))
