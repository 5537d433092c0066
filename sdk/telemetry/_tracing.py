"""Tracing: the process's OpenTelemetry tracer provider, lean W3C trace-context propagation, trace ids.

The per-call helpers here avoid the generic propagator API (a composite of TraceContext and Baggage that
builds dicts and runs regular expressions per call): only ``traceparent``/``tracestate`` are read and written,
which is what the mesh propagates between hops.
"""

from __future__ import annotations

import logging
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from agentmesh._settings import Settings

logger = logging.getLogger(__name__)

# Instrumentation scope of every span the mesh's interceptors emit.
TRACER_NAME = "agentmesh.telemetry"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_lock = threading.Lock()
_provider: TracerProvider | None = None


def configure_tracing(settings: Settings, service_name: str) -> trace.TracerProvider:
    """Install the process's tracer provider from settings (once per process) and return it.

    Head sampling is parent-based with ``settings.trace_sampling`` as the ratio for new traces; spans are
    exported per ``settings.trace_exporter`` (``none``, ``console`` or ``otlp``). A provider already installed
    by the application (or by a test) is kept.
    """
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):  # someone else configured the process first
            _provider = current
            return current
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.trace_sampling)),
            resource=Resource.create({"service.name": service_name}),
        )
        exporter = _exporter(settings)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _provider = provider
        logger.info(
            "tracing: sampling %.4g parent-based, exporter %s",
            settings.trace_sampling,
            settings.trace_exporter,
        )
        return provider


def _exporter(settings: Settings) -> SpanExporter | None:
    kind = settings.trace_exporter.strip().lower()
    if kind in ("", "none"):
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    raise ValueError(f"AGENTMESH_TRACE_EXPORTER={settings.trace_exporter!r}: expected none, console or otlp")


def get_tracer(tracer_provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """The mesh's tracer from ``tracer_provider`` (default: the global one)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or ``""`` outside a trace (store it on records)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.trace_id else ""


def current_span_id() -> str:
    """The current span id as 16 hex digits, or ``""`` outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.span_id, "016x") if context.span_id else ""


def parse_traceparent(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """The remote parent named by a W3C ``traceparent`` header, or None when it is malformed."""
    parts = traceparent.strip().split("-")
    if (
        len(parts) < 4
        or len(parts[0]) != 2
        or len(parts[1]) != 32
        or len(parts[2]) != 16
        or len(parts[3]) != 2
    ):
        return None
    if parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state)


def remote_parent(span_context: SpanContext) -> NonRecordingSpan:
    """A span standing for a remote parent, to start children under it."""
    return NonRecordingSpan(span_context)


def traceparent_of(span_context: SpanContext) -> list[tuple[str, str]]:
    """The metadata entries that propagate ``span_context`` to the next hop (W3C trace context)."""
    header = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags & 0xFF:02x}"
    )
    entries = [(TRACEPARENT, header)]
    if span_context.trace_state:
        entries.append((TRACESTATE, span_context.trace_state.to_header()))
    return entries
