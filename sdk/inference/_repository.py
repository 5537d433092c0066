"""Build a servable Triton model repository from the one shipped in ``models/`` (package data, next to this module) plus cached artifacts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from agentmesh.inference._export import ensure_minilm_onnx

__all__ = ["SOURCE_MODEL_REPOSITORY", "prepare_model_repository"]

# The repository shipped with the project: configs and python-backend model code, no weights.
SOURCE_MODEL_REPOSITORY = Path(__file__).resolve().parent / "models"
# Models whose version folder needs the MiniLM ONNX graph and tokenizer.
_MINILM_MODELS = ("minilm_embedding",)


def prepare_model_repository(home: Path, *, source: Path | None = None, target: Path | None = None) -> Path:
    """Copy the shipped repository to ``target`` (default ``home/triton/model_repository``) with weights.

    Idempotent and quick when nothing changed: the ONNX export is cached and files are copied only when
    they differ. The result is self-contained (no symlinks), so it can be shipped to a GPU Triton node.
    """
    source = Path(source or SOURCE_MODEL_REPOSITORY)
    target = Path(target or Path(home) / "triton" / "model_repository")
    if not source.is_dir():
        raise FileNotFoundError(f"model repository source {source} does not exist")
    artifacts = ensure_minilm_onnx(Path(home))
    for model in sorted(p for p in source.iterdir() if (p / "config.pbtxt").is_file()):
        for path in sorted(model.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                copy_if_changed(path, target / model.name / path.relative_to(model))
        if model.name in _MINILM_MODELS:
            copy_if_changed(artifacts.onnx, target / model.name / "1" / "model.onnx")
            copy_if_changed(artifacts.tokenizer, target / model.name / "1" / "tokenizer.json")
    return target


def copy_if_changed(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically unless an identical (size, mtime) copy is already there."""
    if target.is_file():
        have, want = target.stat(), source.stat()
        if have.st_size == want.st_size and have.st_mtime_ns == want.st_mtime_ns:
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name: several processes may prepare the same repository at once.
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as handle:
        partial = Path(handle.name)
    try:
        shutil.copy2(source, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
