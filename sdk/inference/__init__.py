"""Inference on NVIDIA Triton: the async client, model selection, and the local bundled server.

``InferenceClient`` talks KServe v2 gRPC to any Triton (``AGENTMESH_TRITON_URL``); ``LocalTriton`` runs
the ``tritonserver`` bundled in nvidia-pytriton on CPU over the repository shipped in ``models/``.
"""

from __future__ import annotations

from agentmesh.inference._client import InferenceClient
from agentmesh.inference._export import MinilmArtifacts, ensure_minilm_onnx
from agentmesh.inference._local import LocalTriton, free_port, triton_environment
from agentmesh.inference._repository import SOURCE_MODEL_REPOSITORY, prepare_model_repository
from agentmesh.inference._results import (
    Classification,
    ClassificationResult,
    EmbeddingResult,
    InferenceResult,
    SentimentResult,
)
from agentmesh.inference._selection import DEFAULT_MODELS, ModelCatalog, ModelSpec, Tier

__all__ = [
    "DEFAULT_MODELS",
    "SOURCE_MODEL_REPOSITORY",
    "Classification",
    "ClassificationResult",
    "EmbeddingResult",
    "InferenceClient",
    "InferenceResult",
    "LocalTriton",
    "MinilmArtifacts",
    "ModelCatalog",
    "ModelSpec",
    "SentimentResult",
    "Tier",
    "ensure_minilm_onnx",
    "free_port",
    "prepare_model_repository",
    "triton_environment",
]
