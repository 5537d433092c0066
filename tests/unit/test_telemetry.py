"""Trace context parsing, trace ids for handlers, JSON logs with trace ids and no secrets, metrics."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from prometheus_client import REGISTRY

from agentmesh._settings import Settings
from agentmesh.telemetry import configure_logging, current_span_id, current_trace_id, redact, server_telemetry
from agentmesh.telemetry._tracing import parse_traceparent, traceparent_of

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


class FakeServicerContext:
    """Just what the server telemetry reads from a grpc.aio servicer context."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50123"


def test_traceparent_round_trips() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-{PARENT}-01", "vendor=x")
    assert parsed is not None and parsed.is_remote and parsed.trace_flags.sampled
    (header, value), (state_key, state) = traceparent_of(parsed)
    assert (header, value) == ("traceparent", f"00-{TRACE}-{PARENT}-01")
    assert (state_key, state) == ("tracestate", "vendor=x")


def test_malformed_traceparents_are_ignored() -> None:
    for bad in [
        "",
        "garbage",
        f"00-{TRACE}-{PARENT}",
        f"00-{'0' * 32}-{PARENT}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-extra",
        f"00-{TRACE[:-1]}z-{PARENT}-01",
    ]:
        assert parse_traceparent(bad) is None, bad


def test_server_span_continues_the_callers_trace_even_when_not_sampled() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = server_telemetry(Settings(), "unit", tracer_provider=provider)
    assert current_trace_id() == ""
    observation = telemetry.start(
        "/unit.Svc/Do", FakeServicerContext((("traceparent", f"00-{TRACE}-{PARENT}-00"),))
    )
    assert current_trace_id() == TRACE  # handlers store this on records
    assert len(current_span_id()) == 16 and current_span_id() != PARENT
    observation.end(grpc.StatusCode.OK)
    assert current_trace_id() == ""  # the call's context is gone after it ends
    assert exporter.get_finished_spans() == ()  # unsampled parent: nothing recorded


def test_server_span_and_metrics_record_a_failed_call() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = server_telemetry(Settings(), "unit", tracer_provider=provider)
    labels = {"service": "unit.Svc", "method": "Fail", "code": "UNAVAILABLE"}
    before = REGISTRY.get_sample_value("agentmesh_rpc_server_errors_total", labels) or 0.0
    observation = telemetry.start("/unit.Svc/Fail", FakeServicerContext((("user-agent", "grpc-python"),)))
    assert (
        REGISTRY.get_sample_value("agentmesh_rpc_server_in_flight", {"service": "unit.Svc", "method": "Fail"})
        == 1
    )
    observation.end(grpc.StatusCode.UNAVAILABLE, RuntimeError("database down"))
    assert REGISTRY.get_sample_value("agentmesh_rpc_server_errors_total", labels) == before + 1
    assert REGISTRY.get_sample_value("agentmesh_rpc_server_duration_seconds_count", labels) == before + 1
    assert (
        REGISTRY.get_sample_value("agentmesh_rpc_server_in_flight", {"service": "unit.Svc", "method": "Fail"})
        == 0
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "/unit.Svc/Fail"
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert (
        span.attributes["net.peer.name"] == "localhost" and span.attributes["rpc.user_agent"] == "grpc-python"
    )
    assert span.status.description == "StatusCode.UNAVAILABLE:database down"


def test_json_logs_carry_trace_ids_and_never_secrets() -> None:
    stream = io.StringIO()
    handler = configure_logging(Settings(log_format="json", log_level="INFO"), stream)
    try:
        provider = TracerProvider(sampler=ALWAYS_ON)
        with provider.get_tracer("t").start_as_current_span("work") as span:
            logging.getLogger("agentmesh.test").info(
                "loaded key %s and header %s",
                "-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----",
                "Bearer eyJhbGciOi.eyJzdWIi.c2ln",
                extra={"task_id": "t-1"},
            )
        line = json.loads(stream.getvalue().splitlines()[-1])
    finally:
        logging.getLogger().removeHandler(handler)
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    assert line["task_id"] == "t-1" and line["level"] == "INFO" and line["logger"] == "agentmesh.test"
    assert "MIIEv" not in line["message"] and "eyJ" not in line["message"]
    assert line["message"].count("[REDACTED]") == 2


def test_redaction_keeps_ordinary_text() -> None:
    assert (
        redact("agent billing registered at 127.0.0.1:7400") == "agent billing registered at 127.0.0.1:7400"
    )
    assert redact("password=hunter2 ok") == "[REDACTED] ok"


def test_span_exporter_is_chosen_by_settings() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from agentmesh.telemetry._tracing import _exporter

    assert _exporter(Settings(trace_exporter="none")) is None
    assert isinstance(_exporter(Settings(trace_exporter="console")), ConsoleSpanExporter)
    assert isinstance(
        _exporter(Settings(trace_exporter="otlp", otlp_endpoint="http://127.0.0.1:4317")), OTLPSpanExporter
    )
    with pytest.raises(ValueError, match="AGENTMESH_TRACE_EXPORTER"):
        _exporter(Settings(trace_exporter="jaeger"))


def test_fast_unsampled_children_match_what_the_sdk_would_make() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from agentmesh.telemetry._tracing import UnsampledChildren

    mesh = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01))).get_tracer("t")
    assert UnsampledChildren.for_tracer(TracerProvider(sampler=ALWAYS_ON).get_tracer("t")) is None
    fast = UnsampledChildren.for_tracer(mesh)
    assert fast is not None
    state = TraceState([("vendor", "x")])
    for flags in (0x00, 0x02):  # not sampled, with and without the W3C random-trace-id bit
        parent = SpanContext(int(TRACE, 16), int(PARENT, 16), True, TraceFlags(flags), state)
        by_sdk = mesh.start_span("x", trace.set_span_in_context(NonRecordingSpan(parent)))
        by_fast = fast.child(parent.trace_id, parent.trace_flags, parent.trace_state)
        for span in (by_sdk, by_fast):
            context = span.get_span_context()
            assert not span.is_recording() and not context.is_remote
            assert (context.trace_id, context.trace_flags, context.trace_state) == (
                int(TRACE, 16),
                flags,
                state,
            )
            assert context.span_id not in (0, int(PARENT, 16))
