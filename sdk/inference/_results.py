"""What inference calls return: always the model name and version that produced the answer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["Classification", "ClassificationResult", "EmbeddingResult", "InferenceResult", "SentimentResult"]


@dataclass(frozen=True)
class InferenceResult:
    """Raw outputs of one Triton inference, by output name."""

    model: str
    version: str
    outputs: dict[str, npt.NDArray[np.generic]]
    latency_s: float


@dataclass(frozen=True)
class EmbeddingResult:
    """Unit-length sentence embeddings, one row per input text, in input order."""

    model: str
    version: str
    embeddings: npt.NDArray[np.float32]  # shape (len(texts), dims)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dims(self) -> int:
        """Embedding width (384 for MiniLM)."""
        return int(self.embeddings.shape[1])

    def similarity(self, other: EmbeddingResult | npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Cosine similarity matrix (rows: these texts, columns: ``other``'s)."""
        matrix = (
            other.embeddings if isinstance(other, EmbeddingResult) else np.asarray(other, dtype=np.float32)
        )
        return self.embeddings @ matrix.T


@dataclass(frozen=True)
class SentimentResult:
    """Sentiment per text: ``scores`` in [-1, 1] (negative = unhappy), ``labels`` negative/neutral/positive."""

    model: str
    version: str
    scores: list[float]
    labels: list[str]


@dataclass(frozen=True)
class Classification:
    """One text's zero-shot label: the best label, its probability and every label's probability."""

    label: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassificationResult:
    """Zero-shot classification of several texts by the embedding model named."""

    model: str
    version: str
    items: list[Classification]
