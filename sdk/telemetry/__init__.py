"""Mesh telemetry: OpenTelemetry tracing, Prometheus metrics and structured JSON logs.

``server_telemetry`` is what :class:`agentmesh._server.MeshServer` calls; handlers call
:func:`current_trace_id` to store the trace id on records; processes call :func:`configure_logging` and
:func:`run` (uvloop) at start.
"""

from __future__ import annotations

from agentmesh.telemetry._logging import JsonFormatter, configure_logging, redact
from agentmesh.telemetry._metrics import BREAKER_STATE, start_metrics_server
from agentmesh.telemetry._runtime import run
from agentmesh.telemetry._server import CallObservation, ServerTelemetry, server_telemetry
from agentmesh.telemetry._tracing import configure_tracing, current_span_id, current_trace_id, get_tracer

__all__ = [
    "BREAKER_STATE",
    "CallObservation",
    "JsonFormatter",
    "ServerTelemetry",
    "configure_logging",
    "configure_tracing",
    "current_span_id",
    "current_trace_id",
    "get_tracer",
    "redact",
    "run",
    "server_telemetry",
    "start_metrics_server",
]
