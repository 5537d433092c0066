"""Prometheus metrics of Triton calls made by this process (default registry, created once)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Breaker state is the shared agentmesh_circuit_breaker_state gauge, endpoint "triton:<url>/<model>".
__all__ = ["TRITON_BATCH_SIZE", "TRITON_LATENCY", "TRITON_RETRIES"]

TRITON_LATENCY = Histogram(
    "agentmesh_triton_request_duration_seconds",
    "Latency of Triton inference calls seen by the client, by model and gRPC status code.",
    ("model", "code"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TRITON_BATCH_SIZE = Histogram(
    "agentmesh_triton_request_batch_size",
    "Rows (e.g. texts) per Triton request, by model; Triton's dynamic batcher merges requests further.",
    ("model",),
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
TRITON_RETRIES = Counter(
    "agentmesh_triton_retries_total",
    "Triton calls retried after a transient error, by model.",
    ("model",),
)
