"""Triton python-backend model: sentiment of customer messages in [-1, 1].

A polarity lexicon (VADER-style negation, intensifiers, caps and exclamation emphasis) blended with MiniLM
embedding similarity to positive and negative prototype sentences, obtained from ``minilm_embedding``
through BLS so this model needs no weights of its own.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

_NEGATORS = {"not", "no", "never", "nothing", "nobody", "neither", "nor", "without", "cannot", "hardly"}
_INTENSIFIERS = {
    "very": 0.3,
    "really": 0.3,
    "so": 0.25,
    "extremely": 0.5,
    "absolutely": 0.5,
    "totally": 0.4,
    "completely": 0.4,
    "incredibly": 0.5,
    "utterly": 0.5,
    "super": 0.3,
    "most": 0.3,
}
_WORD = re.compile(r"[A-Za-z']+|!")
# Prototypes describe feelings, not topics, so a calm refund request is not pulled towards "negative".
_NEGATIVE = [
    "I am furious, this is completely unacceptable.",
    "This is the worst service I have ever had, I am so angry.",
    "I am very disappointed and frustrated with you.",
    "You keep ignoring me and I am fed up with this.",
]
_POSITIVE = [
    "Thank you so much, I am really happy with the service.",
    "Great job, everything works perfectly now.",
    "I love this product, you were very helpful.",
    "I appreciate your quick and kind support.",
]
_NEUTRAL = [
    "I would like to update my shipping address.",
    "What are your opening hours?",
    "Please send me a copy of my invoice.",
]


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return str(config.get("parameters", {}).get(key, {}).get("string_value", default))


def _load_lexicon(path: str) -> dict[str, float]:
    lexicon: dict[str, float] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip() and not line.startswith("#"):
                word, value = line.split("\t")
                lexicon[word.strip().lower()] = float(value)
    return lexicon


def lexical_score(text: str, lexicon: dict[str, float]) -> tuple[float, int]:
    """VADER-style compound score in [-1, 1] and the number of polar words found."""
    tokens = _WORD.findall(text)
    words = [t for t in tokens if t != "!"]
    # Caps emphasise a word only when the rest of the message is not all caps (as in VADER).
    mixed_case = sum(w.isupper() and len(w) > 1 for w in words) < max(1, len(words)) // 2
    total, hits = 0.0, 0
    for index, word in enumerate(words):
        lowered = word.lower().replace("n't", "")
        valence = lexicon.get(lowered, lexicon.get(lowered.rstrip("s"), 0.0))
        if valence == 0.0:
            continue
        hits += 1
        window = [w.lower() for w in words[max(0, index - 3) : index]]
        for before in window:
            if before in _INTENSIFIERS:
                valence += math.copysign(_INTENSIFIERS[before], valence)
        if mixed_case and word.isupper() and len(word) > 1:
            valence += math.copysign(0.7, valence)
        if any(w in _NEGATORS or w.endswith("n't") for w in window):
            valence *= -0.74
        total += valence
    if total:
        total += math.copysign(min(tokens.count("!"), 4) * 0.29, total)
    return total / math.sqrt(total * total + 15.0), hits


class TritonPythonModel:
    """Blends lexicon polarity with embedding-prototype polarity."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.lexicon = _load_lexicon(os.path.join(folder, "lexicon.tsv"))
        self.lexicon_weight = float(_parameter(config, "lexicon_weight", "0.6"))
        self.neutral_band = float(_parameter(config, "neutral_band", "0.2"))
        self.prototypes: dict[str, np.ndarray] | None = None

    def _embed(self, texts: list[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), 32):
            chunk = np.array([t.encode("utf-8") for t in texts[start : start + 32]], dtype=object).reshape(
                -1, 1
            )
            request = pb_utils.InferenceRequest(
                model_name="minilm_embedding",
                requested_output_names=["EMBEDDING"],
                inputs=[pb_utils.Tensor("TEXT", chunk)],
            )
            response = request.exec()
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            rows.append(pb_utils.get_output_tensor_by_name(response, "EMBEDDING").as_numpy())
        return np.concatenate(rows)

    def _prototype_embeddings(self) -> dict[str, np.ndarray]:
        # Lazily: BLS calls are not available while models are still loading.
        if self.prototypes is None:
            embedded = self._embed(_NEGATIVE + _POSITIVE + _NEUTRAL)
            n, p = len(_NEGATIVE), len(_POSITIVE)
            self.prototypes = {
                "negative": embedded[:n],
                "positive": embedded[n : n + p],
                "neutral": embedded[n + p :],
            }
        return self.prototypes

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        counts: list[int] = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            counts.append(len(raw))
            texts.extend(
                item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in raw
            )
        scores = self.score(texts) if texts else np.zeros(0, dtype=np.float32)
        labels = np.array(
            [
                b"negative"
                if s <= -self.neutral_band
                else b"positive"
                if s >= self.neutral_band
                else b"neutral"
                for s in scores
            ],
            dtype=object,
        )
        responses, start = [], 0
        for count in counts:
            outputs = [
                pb_utils.Tensor("SCORE", scores[start : start + count].reshape(-1, 1)),
                pb_utils.Tensor("LABEL", labels[start : start + count].reshape(-1, 1)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += count
        return responses

    def score(self, texts: list[str]) -> np.ndarray:
        """Sentiment in [-1, 1] for each text."""
        prototypes = self._prototype_embeddings()
        embedded = self._embed(texts)
        negative = (embedded @ prototypes["negative"].T).max(axis=1)
        positive = (embedded @ prototypes["positive"].T).max(axis=1)
        neutral = (embedded @ prototypes["neutral"].T).max(axis=1)
        # Polar evidence only counts where it beats the neutral prototypes.
        semantic = np.clip(
            (np.maximum(positive - neutral, 0) - np.maximum(negative - neutral, 0)) * 2.5, -1, 1
        )
        results = []
        for text, semantic_score in zip(texts, semantic, strict=True):
            lexical, hits = lexical_score(text, self.lexicon)
            weight = self.lexicon_weight if hits else 0.0
            results.append(weight * lexical + (1.0 - weight) * float(semantic_score))
        return np.clip(np.array(results, dtype=np.float32), -1.0, 1.0)
