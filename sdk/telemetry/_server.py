"""Per-call server telemetry: a SERVER span (lean, same shape as opentelemetry-instrumentation-grpc's) and
Prometheus metrics, started and ended by the mesh server interceptor.

The span has the stock instrumentation's name (the full method), kind, attributes (``rpc.system``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``, ``net.peer.*``, ``rpc.user_agent``) and parent
(from the caller's ``traceparent``). Unsampled calls get a non-recording span that still carries the trace
context, so handlers see a trace id and outbound calls propagate it; peer attributes are only computed for
recorded spans.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from agentmesh._settings import Settings
from agentmesh.telemetry._metrics import MethodMetrics, start_metrics_server
from agentmesh.telemetry._tracing import (
    TRACEPARENT,
    TRACESTATE,
    UnsampledChildren,
    configure_tracing,
    get_tracer,
    parse_traceparent_ids,
    remote_parent,
)

# The servicer context of the inbound call being served, so outbound calls inherit its remaining deadline.
inbound_call: contextvars.ContextVar[Any] = contextvars.ContextVar("agentmesh_inbound_call", default=None)

# Codes the stock instrumentation marks as a server-side ERROR status; others leave the status UNSET.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_OK = grpc.StatusCode.OK


class CallObservation:
    """One call being observed; :meth:`end` records its outcome exactly once."""

    __slots__ = ("_call_token", "_metrics", "_otel_token", "_span", "_started")

    def __init__(
        self,
        span: trace.Span,
        otel_token: contextvars.Token[otel_context.Context],
        call_token: contextvars.Token[Any],
        metrics: MethodMetrics,
    ) -> None:
        self._span = span
        self._otel_token = otel_token
        self._call_token = call_token
        self._metrics: MethodMetrics | None = metrics
        self._started = time.perf_counter()
        metrics.in_flight.inc()

    def end(self, code: grpc.StatusCode, error: BaseException | None = None, *, detach: bool = True) -> None:
        """Record the call's outcome (status code and, for failures, the error) and close its span.

        ``detach=False`` for a response stream the client cancelled: grpc closes its generator from another
        context, where the call's context cannot (and need not) be restored."""
        metrics = self._metrics
        if metrics is None:
            return
        self._metrics = None
        seconds = time.perf_counter() - self._started
        metrics.in_flight.dec()
        if code is _OK:
            metrics.ok_latency.observe(seconds)
        else:
            metrics.failed(code.name, seconds)
        span = self._span
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERROR_CODES:
                details = getattr(error, "message", None) or (str(error) if error else code.value[1])
                span.set_status(Status(StatusCode.ERROR, f"{code}:{details}"))
            if error is not None and not isinstance(error, grpc.aio.AbortError):
                span.record_exception(error)
        span.end()
        if not detach:
            return
        try:
            otel_context.detach(self._otel_token)
            inbound_call.reset(self._call_token)
        except ValueError:  # ended in another context (a cancelled stream): the task is gone anyway
            pass


class ServerTelemetry:
    """Starts a :class:`CallObservation` per call of one server."""

    def __init__(self, service_name: str, tracer: trace.Tracer) -> None:
        self.service_name = service_name
        self._tracer = tracer
        self._unsampled = UnsampledChildren.for_tracer(tracer)
        self._methods: dict[str, tuple[MethodMetrics, dict[str, Any]]] = {}

    def _method(self, method: str) -> tuple[MethodMetrics, dict[str, Any]]:
        entry = self._methods.get(method)
        if entry is None:
            service, _, name = method.lstrip("/").partition("/")
            attributes = {
                "rpc.system": "grpc",
                "rpc.grpc.status_code": 0,
                "rpc.method": name,
                "rpc.service": service,
            }
            entry = self._methods[method] = (MethodMetrics(service, name), attributes)
        return entry

    def start(self, method: str, context: Any) -> CallObservation:
        """Begin observing one call of ``method`` served with servicer ``context``."""
        metrics, attributes = self._method(method)
        traceparent = tracestate = user_agent = None
        for key, value in context.invocation_metadata() or ():
            if key == TRACEPARENT:
                traceparent = value
            elif key == TRACESTATE:
                tracestate = value
            elif key == "user-agent":
                user_agent = value
        parent_context = None
        ids = None if traceparent is None else parse_traceparent_ids(traceparent)
        if ids is not None:
            trace_id, parent_id, flags = ids
            state = TraceState.from_header([tracestate]) if tracestate else None
            if self._unsampled is not None and not flags & TraceFlags.SAMPLED:  # the 99% path at 1% sampling
                child = self._unsampled.child(trace_id, flags, state)
                otel_token = otel_context.attach(trace.set_span_in_context(child))
                return CallObservation(child, otel_token, inbound_call.set(context), metrics)
            remote = SpanContext(
                trace_id, parent_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state
            )
            parent_context = trace.set_span_in_context(remote_parent(remote))
        span = self._tracer.start_span(
            method,
            parent_context,
            SpanKind.SERVER,
            attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():
            _set_peer_attributes(span, context.peer(), user_agent)
        otel_token = otel_context.attach(trace.set_span_in_context(span, parent_context))
        return CallObservation(span, otel_token, inbound_call.set(context), metrics)


def _set_peer_attributes(span: trace.Span, peer: str, user_agent: str | None) -> None:
    # Same parsing as the stock instrumentation: "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000".
    if user_agent is not None:
        span.set_attribute("rpc.user_agent", user_agent)
    if not peer or peer.startswith("unix:"):
        return
    try:
        ip, port = peer.split(",")[0].split(":", 1)[1].rsplit(":", 1)
    except (IndexError, ValueError):
        return
    ip = unquote(ip)
    span.set_attribute("net.peer.ip", ip)
    span.set_attribute("net.peer.port", port)
    if ip in ("[::1]", "127.0.0.1"):
        span.set_attribute("net.peer.name", "localhost")


def server_telemetry(
    settings: Settings, service_name: str, *, tracer_provider: trace.TracerProvider | None = None
) -> ServerTelemetry:
    """Telemetry for a server named ``service_name``: configures tracing and the /metrics port from settings."""
    if tracer_provider is None:
        tracer_provider = configure_tracing(settings, service_name)
    start_metrics_server(settings)
    return ServerTelemetry(service_name, get_tracer(tracer_provider))
