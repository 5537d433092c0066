"""Triton python-backend model: sentiment of customer messages in [-1, 1].

Two signals, blended with weights from the model config (calibrated on the dev split of the support
evaluation set, see bench/bench_support_quality.py --calibrate):

- the VADER lexicon (the ``vaderSentiment`` package: negation, intensifiers, caps, punctuation), which reads
  polar words well, with ``lexicon.tsv``'s additions (support words it lacks, polar words of Spanish,
  German and French);
- MiniLM embedding similarity (through BLS to ``minilm_embedding``, so no weights of its own) to prototype
  sentences for what a lexicon misses: frustration without strong words, urgency, time waited, inability
  to work; and to positive and neutral prototypes, some in Spanish, German and French.

Outputs: SCORE in [-1, 1], LABEL (negative / neutral / positive) and FEATURES, the raw signals (for
calibration): VADER compound, negative and positive proportions, then the closest negative-feeling,
frustration, positive and neutral prototype's cosine similarity. SCORE blends VADER's compound with the
evidence of each polar group over the neutral prototypes (its similarity minus the neutral one's plus a
margin, floored at 0):

    SCORE = clip(lexicon_weight * vader + positive_weight * over(positive) - negative_weight * over(negative)
                 - frustration_weight * over(frustration) + blend_bias)
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

# Prototypes describe feelings and situations, not topics, so a calm refund request is not "negative".
_NEGATIVE = [
    "I am furious, this is completely unacceptable.",
    "This is the worst service I have ever had, I am so angry.",
    "I am very disappointed and frustrated with you.",
    "You keep ignoring me and I am fed up with this.",
    "I am really upset about how I have been treated.",
    "Estoy muy enfadado, esto es inaceptable.",
    "Ich bin sehr verärgert, das ist inakzeptabel.",
    "Je suis très mécontent, c'est inacceptable.",
]
_FRUSTRATION = [
    "I have been waiting for weeks and it still has not arrived.",
    "This is the third time I am writing and nobody answers me.",
    "I cannot do my work because it keeps crashing.",
    "We are completely stuck and cannot work until this is fixed.",
    "It arrived broken and I want my money back.",
    "I need this solved today, it is urgent.",
    "I have spent hours on this and still cannot get it to work.",
    "I have tried several times and it still does not work.",
    "I wrote to you twice and nobody replied.",
    "This is costing me money and customers.",
    "Nothing works and we cannot process any orders.",
    "Someone took money from my card for something I never bought.",
    "You took my money and I want it back now.",
    "It keeps failing and nobody can tell me why.",
    "Llevo semanas esperando y nadie me da una respuesta.",
    "Ich warte seit Wochen und niemand antwortet mir.",
    "J'attends depuis des semaines et personne ne me répond.",
]
_POSITIVE = [
    "Thank you so much, I am really happy with the service.",
    "Great job, everything works perfectly now.",
    "I love this product, you were very helpful.",
    "I appreciate your quick and kind support.",
    "Muchas gracias, la atención fue excelente.",
    "Vielen Dank, ich bin sehr zufrieden mit dem Service.",
    "Merci beaucoup, le service est excellent.",
]
_NEUTRAL = [
    "I would like to update my shipping address.",
    "What are your opening hours?",
    "Please send me a copy of my invoice.",
    "How do I export my orders to a CSV file?",
    "Can I add another user to our team plan?",
    "Please cancel my subscription before it renews.",
    "How do I reset my password?",
    "Where can I create an API key?",
    "¿Cómo puedo cambiar mi dirección de envío?",
    "Wie kann ich meine Rechnung herunterladen?",
    "Comment puis-je modifier mon adresse ?",
]
_GROUPS = ("negative", "frustration", "positive", "neutral")
FEATURES = ("vader", "vader_neg", "vader_pos", "negative", "frustration", "positive", "neutral")
# Blend parameters and their defaults (the config's values are calibrated on the dev split).
_BLEND = {
    "lexicon_weight": "0.5",
    "positive_weight": "3",
    "negative_weight": "2",
    "frustration_weight": "1",
    "neutral_margin": "0",
    "blend_bias": "0",
}


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


class TritonPythonModel:
    """Blends the VADER compound score with embedding-prototype evidence."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.blend = {key: float(_parameter(config, key, default)) for key, default in _BLEND.items()}
        self.neutral_band = float(_parameter(config, "neutral_band", "0.2"))
        self.analyzer = SentimentIntensityAnalyzer()
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.analyzer.lexicon.update(_load_lexicon(os.path.join(folder, "lexicon.tsv")))
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
            groups = (_NEGATIVE, _FRUSTRATION, _POSITIVE, _NEUTRAL)
            embedded = self._embed([s for group in groups for s in group])
            self.prototypes, start = {}, 0
            for name, group in zip(_GROUPS, groups, strict=True):
                self.prototypes[name] = embedded[start : start + len(group)]
                start += len(group)
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
        features = self.features(texts) if texts else np.zeros((0, len(FEATURES)), dtype=np.float32)
        scores = self.blend_scores(features)
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
            rows = slice(start, start + count)
            outputs = [
                pb_utils.Tensor("SCORE", scores[rows].reshape(-1, 1)),
                pb_utils.Tensor("LABEL", labels[rows].reshape(-1, 1)),
                pb_utils.Tensor("FEATURES", features[rows].astype(np.float32)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += count
        return responses

    def blend_scores(self, features: np.ndarray) -> np.ndarray:
        """SCORE from FEATURES (see the module docstring)."""
        b = self.blend
        neutral = features[:, 6]

        def over(column: int) -> np.ndarray:
            return np.maximum(features[:, column] - neutral + b["neutral_margin"], 0.0)

        raw = (
            b["lexicon_weight"] * features[:, 0]
            + b["positive_weight"] * over(5)
            - b["negative_weight"] * over(3)
            - b["frustration_weight"] * over(4)
            + b["blend_bias"]
        )
        return np.clip(raw, -1.0, 1.0).astype(np.float32)

    def features(self, texts: list[str]) -> np.ndarray:
        """Per text, the :data:`FEATURES`: VADER's scores, then the closest prototype of each group."""
        prototypes = self._prototype_embeddings()
        embedded = self._embed(texts)
        vader = [self.analyzer.polarity_scores(t) for t in texts]
        lexical = np.array([[v["compound"], v["neg"], v["pos"]] for v in vader], dtype=np.float32)
        semantic = np.stack([(embedded @ prototypes[name].T).max(axis=1) for name in _GROUPS], axis=1)
        return np.concatenate([lexical, semantic], axis=1).astype(np.float32)
