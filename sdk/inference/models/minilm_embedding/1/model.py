"""Triton python-backend model: all-MiniLM-L6-v2 sentence embeddings with onnxruntime.

Self-contained on purpose (numpy, onnxruntime, tokenizers only) so the same repository loads on a GPU
Triton node without the agentmesh package. The ONNX graph already mean-pools and L2-normalises.

``Embedder`` (tokenize, pad each run to its longest text, one onnxruntime session) needs no Triton: the
benchmark imports this file to measure the in-process bound with exactly the code Triton runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (bench/bench_embeddings.py): Embedder only
    pb_utils = None


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return str(config.get("parameters", {}).get(key, {}).get("string_value", default))


def plan_runs(lengths: list[int], *, max_run: int, overhead_tokens: int) -> list[tuple[int, int]]:
    """Split ascending token ``lengths`` into onnxruntime runs ``[start, end)`` of least estimated cost.

    A run costs a fixed overhead (``overhead_tokens``, in tokens' worth of compute) plus its texts times its
    longest text (each run is padded to its longest). Few texts of mixed length then run as two or three
    tight runs instead of one run padded to the longest; many texts of similar length run together. Runs
    hold at most ``max_run`` texts. Exact (dynamic programming; a batch holds at most a few dozen texts).
    """
    count = len(lengths)
    best = [0] + [1 << 62] * count  # best[j]: least cost of the first j texts
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        for start in range(max(0, end - max_run), end):
            cost = best[start] + overhead_tokens + (end - start) * lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    spans = []
    end = count
    while end > 0:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]


class Embedder:
    """Unit-length 384-d MiniLM embeddings: one onnxruntime session, each run padded to its longest text."""

    def __init__(
        self,
        folder: str,
        *,
        threads: int = 1,
        session_batch: int = 32,
        run_overhead_tokens: int = 12,
        max_tokens: int = 256,
        providers: list[Any] | None = None,
    ) -> None:
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        # The packaged tokenizer pads every text to 128 tokens; embed() pads each run to its longest text
        # instead (several-fold less compute for short tickets).
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)
        self.session_batch = session_batch
        self.run_overhead_tokens = run_overhead_tokens
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.provider = self.session.get_providers()[0]
        if self.provider == "CUDAExecutionProvider":
            # A GPU wants the whole batch in one run: padding is cheap there, launches are not.
            self.session_batch = self.run_overhead_tokens = 1 << 30

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length 384-d embeddings of ``texts``."""
        result = np.zeros((len(texts), 384), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        lengths = [len(encodings[i].ids) for i in order]
        for start, end in plan_runs(
            lengths, max_run=self.session_batch, overhead_tokens=self.run_overhead_tokens
        ):
            rows = order[start:end]
            width = lengths[end - 1]
            input_ids = np.zeros((len(rows), width), dtype=np.int64)  # [PAD] is id 0
            attention_mask = np.zeros((len(rows), width), dtype=np.int64)
            for row, index in enumerate(rows):
                ids = encodings[index].ids
                input_ids[row, : len(ids)] = ids
                attention_mask[row, : len(ids)] = 1
            feeds = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": np.zeros_like(input_ids),
            }
            result[rows] = self.session.run(["sentence_embedding"], feeds)[0]
        return result


class TritonPythonModel:
    """Tokenizes a batch padded to its longest text and runs one forward pass for all queued requests."""

    def initialize(self, args: dict[str, str]) -> None:
        # Each instance is one thread; tokenizer worker threads would only fight the other instance.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        config = json.loads(args["model_config"])
        self.embedder = Embedder(
            os.path.join(args["model_repository"], args["model_version"]),
            threads=int(_parameter(config, "intra_op_threads", "1")),
            session_batch=int(_parameter(config, "session_batch", "32")),
            run_overhead_tokens=int(_parameter(config, "run_overhead_tokens", "12")),
            max_tokens=int(_parameter(config, "max_tokens", "256")),
            providers=self._providers(_parameter(config, "execution_provider", "auto"), args),
        )
        pb_utils.Logger.log_info(
            f"minilm_embedding instance {args['model_instance_name']} on {self.embedder.provider}"
        )

    @staticmethod
    def _providers(choice: str, args: dict[str, str]) -> list[Any]:
        available = ort.get_available_providers()
        use_cuda = choice == "cuda" or (choice == "auto" and "CUDAExecutionProvider" in available)
        if use_cuda:
            device = int(args.get("model_instance_device_id", "0") or 0)
            return [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        counts: list[int] = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            counts.append(len(raw))
            texts.extend(
                item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in raw
            )
        embeddings = self.embedder.embed(texts)
        responses = []
        start = 0
        for count in counts:
            output = pb_utils.Tensor("EMBEDDING", embeddings[start : start + count])
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            start += count
        return responses

    def finalize(self) -> None:
        self.embedder = None
