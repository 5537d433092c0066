"""Inference on NVIDIA Triton: the async client, model selection, and the local bundled server.

``InferenceClient`` talks KServe v2 gRPC to any Triton (``AGENTMESH_TRITON_URL``); ``LocalTriton`` runs
the ``tritonserver`` bundled in nvidia-pytriton on CPU over the repository shipped in ``agentmesh/inference/models/``.
"""

from __future__ import annotations

from agentmesh.inference._client import InferenceClient
from agentmesh.inference._export import MinilmArtifacts, ensure_minilm_onnx
from agentmesh.inference._local import LocalTriton, free_port, triton_environment
from agentmesh.inference._repository import prepare_model_repository
from agentmesh.inference._results import (
    Classification,
    ClassificationResult,
    EmbeddingResult,
    InferenceResult,
    SentimentResult,
)
from agentmesh.inference._selection import ModelCatalog, ModelSpec, Tier, default_catalog

__all__ = [
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
    "default_catalog",
    "ensure_minilm_onnx",
    "free_port",
    "prepare_model_repository",
    "triton_environment",
]
