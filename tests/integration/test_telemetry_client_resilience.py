"""What a caller of a flaky or slow mesh server sees through ``create_channel``: retries, deadlines, breaker.

Servers and clients use mTLS from the session CA and the test policy of test_telemetry.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from agentmesh._channel import create_channel
from agentmesh._errors import ResourceExhaustedError, UnavailableError
from agentmesh._server import MeshServer
from agentmesh._settings import Settings
from agentmesh.resilience import BreakerState, with_deadline
from tests.fixtures.certs import IssueIdentity
from tests.integration.test_telemetry import binding, policy_settings, raw_method


@pytest.fixture(scope="session")
def tuned(
    mesh_settings: Settings, issue_identity: IssueIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Fast retries, a 5 s default deadline, a breaker that opens after 3 failures and stays open."""
    settings = policy_settings(mesh_settings, issue_identity, tmp_path_factory.mktemp("resilience"))
    return settings.replace(
        retry_initial_backoff=0.001,
        retry_max_backoff=0.005,
        default_deadline=5.0,
        breaker_failure_threshold=3,
        breaker_reset_timeout=60.0,
    )


class Backend:
    """A server whose next ``failures`` calls fail UNAVAILABLE; records each call's remaining deadline."""

    def __init__(self) -> None:
        self.failures = 0
        self.calls = 0
        self.delay = 0.0
        self.budgets: list[float | None] = []

    async def call(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        self.budgets.append(context.time_remaining())
        if self.failures:
            self.failures -= 1
            raise UnavailableError("warming up")
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow dependency, not a wait for readiness
        return request


@pytest.fixture
async def backend(tuned: Settings) -> AsyncIterator[tuple[Backend, grpc.aio.Channel]]:
    state = Backend()
    server = MeshServer(name="backend", settings=tuned, port=0, services=[binding("t.Backend", state.call)])
    await server.start()
    channel = create_channel(server.address, tuned, kind="client", name="caller")
    yield state, channel
    await channel.close()
    await server.stop(0)


async def test_transient_unavailable_is_retried_transparently(
    backend: tuple[Backend, grpc.aio.Channel],
) -> None:
    state, channel = backend
    state.failures = 2
    assert await raw_method(channel, "/t.Backend/Call")(b"x") == b"x"
    assert state.calls == 3


async def test_retries_give_up_after_the_configured_attempts(
    backend: tuple[Backend, grpc.aio.Channel], tuned: Settings
) -> None:
    state, channel = backend
    state.failures = 10
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await raw_method(channel, "/t.Backend/Call")(b"x")
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert state.calls == tuned.retry_max_attempts


async def test_every_call_gets_the_default_deadline(
    backend: tuple[Backend, grpc.aio.Channel], tuned: Settings
) -> None:
    state, channel = backend
    await raw_method(channel, "/t.Backend/Call")(b"x")
    (budget,) = state.budgets
    assert budget is not None and 4.0 < budget <= tuned.default_deadline


async def test_a_slow_non_idempotent_call_times_out_once(backend: tuple[Backend, grpc.aio.Channel]) -> None:
    state, channel = backend
    state.delay = 0.5
    started = time.monotonic()
    with with_deadline(0.1), pytest.raises(grpc.aio.AioRpcError) as failed:
        await raw_method(channel, "/t.Backend/Call")(b"x")
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.4
    assert state.calls == 1  # DEADLINE_EXCEEDED is retried only for idempotent methods


async def test_inbound_budget_is_propagated_to_downstream_calls(
    backend: tuple[Backend, grpc.aio.Channel], tuned: Settings
) -> None:
    state, to_backend = backend

    async def front(request: bytes, context: Any) -> bytes:
        return await raw_method(to_backend, "/t.Backend/Call")(request)  # no timeout given here

    server = MeshServer(name="front", settings=tuned, port=0, services=[binding("t.Front", front)])
    await server.start()
    try:
        async with create_channel(server.address, tuned, kind="client", name="caller") as channel:
            await raw_method(channel, "/t.Front/Call")(b"x", timeout=1.5)
    finally:
        await server.stop(0)
    (budget,) = state.budgets
    assert budget is not None and 1.0 < budget <= 1.5  # the caller's 1.5 s, not the 5 s default


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_breaker_opens_on_a_dead_endpoint_and_fails_fast(tuned: Settings) -> None:
    target = f"127.0.0.1:{_closed_port()}"
    settings = tuned.replace(retry_max_attempts=1)
    async with create_channel(target, settings, kind="client", name="caller") as channel:
        call = raw_method(channel, "/t.Backend/Call")
        for _ in range(settings.breaker_failure_threshold):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"x")
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "circuit open" not in (refused.value.details() or "")
        assert REGISTRY.get_sample_value("agentmesh_circuit_breaker_state", {"endpoint": target}) == 2
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as fast:
            await call(b"x")
        assert time.monotonic() - started < 0.05
    assert fast.value.code() is grpc.StatusCode.UNAVAILABLE
    assert (fast.value.details() or "").startswith(f"circuit open for {target}")
    assert _reason(fast.value) == "CIRCUIT_OPEN"


async def test_retries_stop_at_an_open_circuit(tuned: Settings) -> None:
    target = f"127.0.0.1:{_closed_port()}"
    settings = tuned.replace(breaker_failure_threshold=2, retry_max_attempts=5)
    async with create_channel(target, settings, kind="client", name="caller") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await raw_method(channel, "/t.Backend/Call")(b"x")
    # Two refused attempts opened the circuit; the third attempt met it and did not retry on.
    assert (failed.value.details() or "").startswith(f"circuit open for {target}")
    assert (
        REGISTRY.get_sample_value(
            "agentmesh_circuit_breaker_transitions_total", {"endpoint": target, "state": "open"}
        )
        == 1
    )


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


async def test_resource_exhausted_with_retry_info_is_retried(tuned: Settings) -> None:
    calls = 0

    async def limited(request: bytes, context: Any) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ResourceExhaustedError("rate limited", retry_after=0.02)
        return request

    server = MeshServer(name="limited", settings=tuned, port=0, services=[binding("t.Limited", limited)])
    await server.start()
    try:
        async with create_channel(server.address, tuned, kind="client", name="caller") as limited_channel:
            started = time.monotonic()
            assert await raw_method(limited_channel, "/t.Limited/Call")(b"x") == b"x"
    finally:
        await server.stop(0)
    assert calls == 2 and time.monotonic() - started >= 0.02


async def test_a_channel_expecting_another_identity_at_the_same_address_keeps_its_own_breaker(
    tuned: Settings,
) -> None:
    """A registry channel failing at an address does not open the circuit of a planner channel to that address:
    the breaker is shared per address and expected server identity, not per address."""
    target = f"127.0.0.1:{_closed_port()}"
    settings = tuned.replace(retry_max_attempts=1)
    async with (
        create_channel(target, settings, kind="client", name="caller", server_identity="service/registry") as registry,
        create_channel(target, settings, kind="client", name="caller", server_identity="service/planner") as planner,
    ):
        for _ in range(settings.breaker_failure_threshold):
            with pytest.raises(grpc.aio.AioRpcError):
                await raw_method(registry, "/t.Backend/Call")(b"x")
        with pytest.raises(grpc.aio.AioRpcError) as fast:
            await raw_method(registry, "/t.Backend/Call")(b"x")
        assert (fast.value.details() or "").startswith(f"circuit open for {target} as service/registry")
        with pytest.raises(grpc.aio.AioRpcError) as tried:  # attempted (and refused), not failed fast
            await raw_method(planner, "/t.Backend/Call")(b"x")
        assert "circuit open" not in (tried.value.details() or "")
    assert REGISTRY.get_sample_value(
        "agentmesh_circuit_breaker_state", {"endpoint": f"{target} as service/registry"}
    ) == BreakerState.OPEN
