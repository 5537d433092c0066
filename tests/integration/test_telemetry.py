"""A trace spans client → server A → downstream server B; the lean spans match the stock instrumentation's.

The mesh servers run with mTLS from the session CA (tests/fixtures/certs.py) and a policy that lets every mesh
identity call the test services ``t.*``. The span-shape comparison runs bare ``grpc.aio`` servers in
plaintext: it compares two interceptor stacks, not transports.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from agentmesh._channel import create_channel
from agentmesh._server import MeshServer, ServiceBinding, _MeshInterceptor
from agentmesh._settings import Settings
from agentmesh.resilience import MeshChannel, MeshClientInterceptor
from agentmesh.telemetry import current_trace_id, get_tracer, server_telemetry, start_metrics_server
from tests.fixtures.certs import IssueIdentity

Handler = Callable[[bytes, Any], Awaitable[bytes]]


def raw_method(channel: grpc.aio.Channel, path: str) -> Any:
    """A raw-bytes unary method of ``channel`` (grpc-stubs wrongly require serializers)."""
    return channel.unary_unary(path)  # type: ignore[call-arg]


def binding(service: str, handler: Handler) -> ServiceBinding:
    """A raw-bytes service ``service`` with one method ``Call``."""

    def add(server: grpc.aio.Server) -> None:
        methods = {"Call": grpc.unary_unary_rpc_method_handler(handler)}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, methods)])

    return ServiceBinding(full_name=service, add_to_server=add)


POLICY = """
version: 1
rules:
  - name: every mesh workload may call the test services
    identities: ["spiffe://{trust_domain}/*"]
    methods: ["/t.*/*"]
"""
TEST_IDENTITIES = [
    ("service", "a"),
    ("service", "b"),
    ("service", "backend"),
    ("service", "front"),
    ("service", "limited"),
    ("client", "tester"),
    ("client", "caller"),
]


def policy_settings(mesh_settings: Settings, issue_identity: IssueIdentity, directory: Path) -> Settings:
    """mTLS settings from the session CA, identities for the test servers and clients, a policy for t.*."""
    for kind, name in TEST_IDENTITIES:
        issue_identity(kind, name)
    policy = directory / "policy.yaml"
    policy.write_text(POLICY)
    return mesh_settings.replace(authz_policy_file=str(policy))


@pytest.fixture(scope="session")
def settings(
    mesh_settings: Settings, issue_identity: IssueIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return policy_settings(mesh_settings, issue_identity, tmp_path_factory.mktemp("telemetry"))


@pytest.fixture
async def relay(settings: Settings) -> AsyncIterator[tuple[grpc.aio.Channel, dict[str, list[str]]]]:
    """Server A whose handler calls server B; each handler records the trace id it sees."""
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def b_call(request: bytes, context: Any) -> bytes:
        seen["b"].append(current_trace_id())
        return b"b:" + request

    server_b = MeshServer(name="b", settings=settings, port=0, services=[binding("t.B", b_call)])
    await server_b.start()
    to_b = create_channel(server_b.address, settings, kind="service", name="a")

    async def a_call(request: bytes, context: Any) -> bytes:
        seen["a"].append(current_trace_id())
        return b"a:" + await raw_method(to_b, "/t.B/Call")(request)

    server_a = MeshServer(name="a", settings=settings, port=0, services=[binding("t.A", a_call)])
    await server_a.start()
    to_a = create_channel(server_a.address, settings, kind="client", name="tester")
    yield to_a, seen
    await to_a.close()
    await to_b.close()
    await server_a.stop(0)
    await server_b.stop(0)


async def test_client_server_and_downstream_server_share_one_trace_id(
    relay: tuple[grpc.aio.Channel, dict[str, list[str]]],
) -> None:
    to_a, seen = relay
    caller = TracerProvider(sampler=ALWAYS_ON).get_tracer("test")
    with caller.start_as_current_span("submit task") as root:
        assert await raw_method(to_a, "/t.A/Call")(b"hi") == b"a:b:hi"
    trace_id = format(root.get_span_context().trace_id, "032x")
    assert seen == {"a": [trace_id], "b": [trace_id]}


async def test_unsampled_calls_still_carry_one_trace_id_across_hops(
    relay: tuple[grpc.aio.Channel, dict[str, list[str]]],
) -> None:
    to_a, seen = relay
    await raw_method(to_a, "/t.A/Call")(b"1")
    await raw_method(to_a, "/t.A/Call")(b"2")
    assert seen["a"] == seen["b"]
    assert all(len(t) == 32 for t in seen["a"]) and seen["a"][0] != seen["a"][1]  # a new trace per call


def _recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


class _AllowAll:
    def check(self, method: str, context: Any) -> None:
        """Authorization is not what this test compares."""


async def _run_chain(
    server_interceptor: Callable[[str], grpc.aio.ServerInterceptor],
    make_channel: Callable[[str], grpc.aio.Channel],
) -> None:
    """client → A → B on bare grpc.aio servers with the given interceptors; B fails for b"fail"."""

    async def b_call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"fail":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return request

    server_b = grpc.aio.server(interceptors=[server_interceptor("b")])
    server_b.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("t.B", {"Call": grpc.unary_unary_rpc_method_handler(b_call)})]
    )
    port_b = server_b.add_insecure_port("127.0.0.1:0")
    await server_b.start()
    to_b = make_channel(f"127.0.0.1:{port_b}")

    async def a_call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await raw_method(to_b, "/t.B/Call")(request)
        except grpc.aio.AioRpcError as error:  # pass B's status on, the same way in both chains
            await context.abort(error.code(), error.details() or "")
            raise

    server_a = grpc.aio.server(interceptors=[server_interceptor("a")])
    server_a.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("t.A", {"Call": grpc.unary_unary_rpc_method_handler(a_call)})]
    )
    port_a = server_a.add_insecure_port("127.0.0.1:0")
    await server_a.start()
    async with make_channel(f"127.0.0.1:{port_a}") as to_a:
        assert await raw_method(to_a, "/t.A/Call")(b"ok") == b"ok"
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await raw_method(to_a, "/t.A/Call")(b"fail")
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    await to_b.close(None)
    await server_a.stop(0)
    await server_b.stop(0)


def _shape(spans: tuple[ReadableSpan, ...]) -> list[tuple[Any, ...]]:
    """What must match: name, kind, attributes (minus the ephemeral peer port), status, the parent."""
    by_id = {span.context.span_id: span for span in spans}
    assert len({span.context.trace_id for span in spans}) == 2, "all spans of one call share one trace"
    shapes = []
    for span in spans:
        parent = by_id.get(span.parent.span_id) if span.parent else None
        attributes = {k: v for k, v in (span.attributes or {}).items() if k != "net.peer.port"}
        shapes.append(
            (
                span.name,
                span.kind,
                sorted(attributes.items()),
                span.status.status_code,
                span.status.description,
                (parent.name, parent.kind) if parent else None,
            )
        )
    return sorted(shapes, key=repr)


@pytest.mark.parametrize("client_form", ["MeshChannel", "interceptor"])
async def test_lean_interceptors_emit_the_same_spans_as_the_stock_instrumentation(client_form: str) -> None:
    stock_provider, stock_spans = _recording_provider()
    await _run_chain(
        lambda name: aio_server_interceptor(tracer_provider=stock_provider),
        lambda target: grpc.aio.insecure_channel(
            target, interceptors=aio_client_interceptors(tracer_provider=stock_provider)
        ),
    )
    lean_provider, lean_spans = _recording_provider()

    def lean_channel(target: str) -> grpc.aio.Channel:
        policy = MeshClientInterceptor(
            tracer=get_tracer(lean_provider), breaker=None, retry=None, default_deadline=None
        )
        if client_form == "MeshChannel":  # what create_channel returns
            return MeshChannel(target, (), None, policy)
        return grpc.aio.insecure_channel(target, interceptors=policy.interceptors())

    await _run_chain(
        lambda name: _MeshInterceptor(
            security=_AllowAll(),
            telemetry=server_telemetry(Settings(), name, tracer_provider=lean_provider),
        ),
        lean_channel,
    )
    stock, lean = stock_spans.get_finished_spans(), lean_spans.get_finished_spans()
    assert len(stock) == len(lean) == 8  # per call: client, A server, A's client, B server
    assert _shape(lean) == _shape(stock)
    kinds = {span.kind for span in lean}
    assert kinds == {trace.SpanKind.CLIENT, trace.SpanKind.SERVER}


async def test_server_streams_carry_the_trace_too(settings: Settings) -> None:
    async def watch(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield current_trace_id().encode()

    def add(server: grpc.aio.Server) -> None:
        methods = {"Watch": grpc.unary_stream_rpc_method_handler(watch)}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.A", methods)])

    server = MeshServer(name="a", settings=settings, port=0, services=[ServiceBinding("t.A", add)])
    await server.start()
    try:
        async with create_channel(server.address, settings, kind="client", name="tester") as channel:
            caller = TracerProvider(sampler=ALWAYS_ON).get_tracer("test")
            with caller.start_as_current_span("follow task") as root:
                events = [event async for event in channel.unary_stream("/t.A/Watch")(b"")]  # type: ignore[call-arg]
    finally:
        await server.stop(0)
    assert events == [format(root.get_span_context().trace_id, "032x").encode()] * 3


async def test_metrics_endpoint_serves_rpc_and_breaker_metrics(
    relay: tuple[grpc.aio.Channel, dict[str, list[str]]], settings: Settings
) -> None:
    to_a, _ = relay
    await raw_method(to_a, "/t.A/Call")(b"counted")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    port = start_metrics_server(settings.replace(metrics_port=free))
    assert port is not None
    body = await asyncio.to_thread(_http_get, f"http://127.0.0.1:{port}/metrics")
    assert 'agentmesh_rpc_server_duration_seconds_count{code="OK",method="Call",service="t.A"}' in body
    assert 'agentmesh_rpc_server_in_flight{method="Call",service="t.B"} 0.0' in body
    assert "agentmesh_circuit_breaker_state{endpoint=" in body


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
