"""Triton python-backend model: all-MiniLM-L6-v2 sentence embeddings with onnxruntime.

Self-contained on purpose (numpy, onnxruntime, tokenizers only) so the same repository loads on a GPU
Triton node without the agentmesh package. The ONNX graph already mean-pools and L2-normalises.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return str(config.get("parameters", {}).get(key, {}).get("string_value", default))


class TritonPythonModel:
    """Tokenizes a batch padded to its longest text and runs one forward pass for all queued requests."""

    def initialize(self, args: dict[str, str]) -> None:
        # Each instance is one thread; tokenizer worker threads would only fight the other instance.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        # The packaged tokenizer pads every text to 128 tokens; embed() pads each run to its longest text
        # instead (several-fold less compute for short tickets).
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(_parameter(config, "max_tokens", "256")))
        self.session_batch = int(_parameter(config, "session_batch", "8"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"),
            options,
            providers=self._providers(_parameter(config, "execution_provider", "auto"), args),
        )
        self.provider = self.session.get_providers()[0]
        if self.provider == "CUDAExecutionProvider":
            self.session_batch = 1 << 30  # a GPU wants the whole batch in one run
        pb_utils.Logger.log_info(
            f"minilm_embedding instance {args['model_instance_name']} on {self.provider}"
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
        embeddings = self.embed(texts)
        responses = []
        start = 0
        for count in counts:
            output = pb_utils.Tensor("EMBEDDING", embeddings[start : start + count])
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            start += count
        return responses

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length 384-d embeddings of ``texts``."""
        result = np.zeros((len(texts), 384), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        # On CPU, runs of a few texts of similar length beat one big padded run (less padding, cache-sized).
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.session_batch):
            rows = order[start : start + self.session_batch]
            width = max(len(encodings[i].ids) for i in rows)
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

    def finalize(self) -> None:
        self.session = None
