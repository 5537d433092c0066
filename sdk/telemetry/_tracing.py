"""Tracing: the process's OpenTelemetry tracer provider, lean W3C trace-context propagation, trace ids.

The per-call helpers here avoid the generic propagator API (a composite of TraceContext and Baggage that
builds dicts and runs regular expressions per call): only ``traceparent``/``tracestate`` are read and written,
which is what the mesh propagates between hops.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
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
    """The mesh's tracer from ``tracer_provider`` (default: the global one), one per provider: a provider makes a
    new tracer on every ask, and the planner asks once per step."""
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    tracer = _TRACERS.get(provider)
    if tracer is None:
        tracer = _TRACERS[provider] = trace.get_tracer(TRACER_NAME, tracer_provider=provider)
    return tracer


_TRACERS: weakref.WeakKeyDictionary[trace.TracerProvider, trace.Tracer] = weakref.WeakKeyDictionary()


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or ``""`` outside a trace (store it on records)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.trace_id else ""


def current_span_id() -> str:
    """The current span id as 16 hex digits, or ``""`` outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.span_id, "016x") if context.span_id else ""


def parse_traceparent_ids(traceparent: str) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C ``traceparent`` header, or None when it is malformed."""
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
    return trace_id, span_id, flags


def parse_traceparent(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """The remote parent named by a W3C ``traceparent`` header, or None when it is malformed."""
    ids = parse_traceparent_ids(traceparent)
    if ids is None:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(ids[0], ids[1], is_remote=True, trace_flags=TraceFlags(ids[2]), trace_state=state)


# ParentBased's description names each delegate; children of unsampled parents must be dropped.
_UNSAMPLED_DELEGATES = ("remoteParentNotSampled", "localParentNotSampled")
_ALWAYS_OFF = ALWAYS_OFF.get_description()


class UnsampledChildren:
    """Makes the non-recording child of an unsampled parent without the SDK's ``start_span``.

    Valid only when the tracer's sampler is ``ParentBased`` dropping children of unsampled parents (the
    mesh's configuration); then the result equals the SDK's: same trace id and trace state, a new span id,
    flags not sampled (keeping the W3C random-trace-id bit). It costs a fraction of ``start_span``, which
    matters because at 1% sampling nearly every call inside the mesh takes this path.
    """

    __slots__ = ("_new_span_id",)

    def __init__(self, new_span_id: Callable[[], int]) -> None:
        self._new_span_id = new_span_id

    @classmethod
    def for_tracer(cls, tracer: trace.Tracer) -> UnsampledChildren | None:
        """The fast path for ``tracer``, or None when its sampler might record such children."""
        # The SDK tracer's public ``sampler`` and ``id_generator``; the sampler's delegates are read from its
        # public description (tests/unit/test_private_api_drift.py fails if that format changes).
        sampler = getattr(tracer, "sampler", None)
        id_generator = getattr(tracer, "id_generator", None)
        if not isinstance(sampler, ParentBased) or id_generator is None:
            return None
        declared: Sampler = sampler  # ParentBased leaves get_description unannotated; Sampler declares its str
        description = declared.get_description()
        if not all(f"{delegate}:{_ALWAYS_OFF}" in description for delegate in _UNSAMPLED_DELEGATES):
            return None
        return cls(id_generator.generate_span_id)

    def child(self, trace_id: int, flags: int, trace_state: TraceState | None) -> NonRecordingSpan:
        """The non-recording child span of an unsampled parent in trace ``trace_id``."""
        context = SpanContext(
            trace_id,
            self._new_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags & TraceFlags.RANDOM_TRACE_ID),
            trace_state=trace_state,
        )
        return NonRecordingSpan(context)


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
