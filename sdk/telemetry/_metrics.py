"""Prometheus metrics of one process: RPC latency, in-flight calls, errors, circuit-breaker state.

Metric families live in the default registry, created once per process. Per-call code never calls
``labels()`` (a lock and a dict build): :class:`ServerMetrics` resolves the children of a method once.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from agentmesh._settings import Settings

logger = logging.getLogger(__name__)

# Sub-millisecond buckets matter: a unary call inside the mesh takes about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RPC_LATENCY = Histogram(
    "agentmesh_rpc_server_duration_seconds",
    "Server-side latency of RPCs, by service, method and status code.",
    ("service", "method", "code"),
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge(
    "agentmesh_rpc_server_in_flight",
    "RPCs being served right now.",
    ("service", "method"),
)
RPC_ERRORS = Counter(
    "agentmesh_rpc_server_errors_total",
    "RPCs that ended with a status other than OK.",
    ("service", "method", "code"),
)
BREAKER_STATE = Gauge(
    "agentmesh_circuit_breaker_state",
    "Circuit-breaker state per endpoint: 0 closed, 1 half-open, 2 open.",
    ("endpoint",),
)
BREAKER_TRANSITIONS = Counter(
    "agentmesh_circuit_breaker_transitions_total",
    "Circuit-breaker state changes per endpoint and new state.",
    ("endpoint", "state"),
)

_server_lock = threading.Lock()
_server_port: int | None = None


def start_metrics_server(settings: Settings) -> int | None:
    """Serve ``/metrics`` on ``settings.metrics_port`` (once per process); None when the port is 0."""
    global _server_port
    if not settings.metrics_port:
        return None
    with _server_lock:
        if _server_port is None:
            start_http_server(settings.metrics_port, addr=settings.bind_host)
            _server_port = settings.metrics_port
            logger.info("metrics on http://%s:%d/metrics", settings.bind_host, settings.metrics_port)
        return _server_port


class MethodMetrics:
    """The pre-resolved metric children of one (service, method)."""

    __slots__ = ("_errors", "_latency", "_method", "_service", "in_flight", "ok_latency")

    def __init__(self, service: str, method: str) -> None:
        self._service, self._method = service, method
        self.in_flight = RPC_IN_FLIGHT.labels(service, method)
        self.ok_latency = RPC_LATENCY.labels(service, method, "OK")
        self._latency: dict[str, Histogram] = {"OK": self.ok_latency}
        self._errors: dict[str, Counter] = {}

    def failed(self, code_name: str, seconds: float) -> None:
        """Record a call that ended with ``code_name`` (not OK)."""
        latency = self._latency.get(code_name)
        if latency is None:
            latency = self._latency[code_name] = RPC_LATENCY.labels(self._service, self._method, code_name)
        latency.observe(seconds)
        errors = self._errors.get(code_name)
        if errors is None:
            errors = self._errors[code_name] = RPC_ERRORS.labels(self._service, self._method, code_name)
        errors.inc()
