"""Mesh telemetry: tracing, metrics and structured logs.

(First cut by the lead; the telemetry work replaces the internals and keeps these entry points.)
"""

from __future__ import annotations

from typing import Any

import grpc

from agentmesh._settings import Settings

__all__ = ["CallObservation", "ServerTelemetry", "server_telemetry"]


class CallObservation:
    """What one server call records when it ends."""

    def end(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        """Record the call's outcome."""


class ServerTelemetry:
    """Starts an observation per call (span, metrics)."""

    _NOOP = CallObservation()

    def start(self, method: str, context: Any) -> CallObservation:
        """Begin observing one call of ``method``."""
        return self._NOOP


def server_telemetry(settings: Settings, service_name: str) -> ServerTelemetry:
    """Telemetry for a server named ``service_name``."""
    return ServerTelemetry()
