"""Triton python-backend model: sentiment of customer messages.

The signals (``signals.py``: VADER from the ``vaderSentiment`` package with ``lexicon.tsv``'s additions,
multilingual cue counts for what a lexicon misses, and MiniLM similarity to prototype sentences through BLS
to ``minilm_embedding``) are read by a logistic-regression head (``head.npz``) fitted on the dev split of
the support evaluation set only (``bench/bench_support_quality.py --calibrate-sentiment``).

Outputs per text: SCORE = P(positive) - P(negative) in [-1, 1], LABEL = the most probable of negative /
neutral / positive, and FEATURES = the raw signals (for calibration).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))
from signals import CLASSES, SIGNALS, Head, Signals


class TritonPythonModel:
    """Signals of each text, then the fitted head."""

    def initialize(self, args: dict[str, str]) -> None:
        json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.signals = Signals(folder, self._embed)
        head = folder / "head.npz"
        # Without a fitted head (before the first calibration), or with one fitted for other signals (the
        # signals changed and calibration has not run yet), every text is neutral, SCORE 0; FEATURES are
        # still computed, for the calibration.
        self.head = Head.load(head) if head.exists() else None
        if self.head is not None and self.head.weights.shape[0] != len(SIGNALS):
            self.head = None

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

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        counts: list[int] = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            counts.append(len(raw))
            texts.extend(
                item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in raw
            )
        features = self.signals(texts)
        if self.head is None:
            probabilities = np.tile(np.array([0.0, 1.0, 0.0], dtype=np.float32), (len(texts), 1))
        else:
            probabilities = self.head.probabilities(features)
        scores = (probabilities[:, 2] - probabilities[:, 0]).astype(np.float32)
        labels = np.array([CLASSES[i].encode() for i in probabilities.argmax(axis=1)], dtype=object)
        responses, start = [], 0
        for count in counts:
            rows = slice(start, start + count)
            outputs = [
                pb_utils.Tensor("SCORE", scores[rows].reshape(-1, 1)),
                pb_utils.Tensor("LABEL", labels[rows].reshape(-1, 1)),
                pb_utils.Tensor("FEATURES", features[rows]),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += count
        return responses
