"""An agent's life in the registry: register, heartbeat, survive a lost lease and a late registry, drain, leave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from google.protobuf import json_format

from agentmesh._channel import create_channel
from agentmesh._errors import NotFoundError, UnavailableError
from agentmesh._registry_client import RegistryClient
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.security import _policy
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.registry import RegistryReplica, StartRegistry
from tests.integration.echo_agent import EchoAgent
from tests.integration.test_agent_cli import free_port

# The SDK does not care which engine the registry uses (the registry's own tests cover both): SQLite only.
pytestmark = pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)

# Short leases so heartbeats (every ttl/3) and re-registration happen within a test's time.
LEASE_TTL = 0.6


@pytest.fixture
def agent_settings(mesh_settings: Settings, issue_identity: IssueIdentity) -> Settings:
    issue_identity("agent", "testing/echo")
    issue_identity("service", "planner")
    # A breaker that half-opens quickly, so a registry that comes back is noticed within the test.
    return mesh_settings.replace(
        lease_ttl=LEASE_TTL, readiness_interval=0.05, shutdown_grace=5.0, breaker_reset_timeout=0.5
    )


async def instance_of(ops: RegistryClient) -> registry_pb2.AgentInstance | None:
    """The echo agent's live instance as the registry reports it, or None (also while a restarted registry
    is still loading: it answers UNAVAILABLE, retry shortly)."""
    try:
        view = await ops.get_agent("testing", "echo")
    except (NotFoundError, UnavailableError):
        return None
    return view.instances[0] if view.instances else None


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll ``check`` until it holds (the registry is only observable by asking it)."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polling a remote state, not waiting on a local event
            await asyncio.sleep(0.02)


async def test_an_agent_registers_heartbeats_drains_and_deregisters(
    registry: RegistryReplica, agent_settings: Settings
) -> None:
    agent = EchoAgent(agent_settings)
    runtime = AgentRuntime(agent, port=0, registry_address=registry.address)
    await runtime.start()
    async with registry.client("client", "ops") as ops:
        try:
            async with asyncio.timeout(10):
                await runtime.wait_registered()
            instance = await instance_of(ops)
            assert instance is not None
            assert instance.card.endpoint == runtime.address
            assert [s.name for s in instance.card.skills] == ["echo", "hold", "broken"]
            assert json_format.MessageToDict(instance.card.skills[0].input_schema)["required"] == ["text"]
            assert instance.state == agent_pb2.SERVING_STATE_SERVING
            # Heartbeats keep the lease alive well past its TTL.
            first_expiry = instance.lease_expire_time.ToNanoseconds()

            async def renewed() -> bool:
                current = await instance_of(ops)
                return current is not None and current.lease_expire_time.ToNanoseconds() > first_expiry + 2 * LEASE_TTL * 1e9

            await eventually(renewed)
            assert runtime.registration is not None and runtime.registration.registrations == 1
            assert runtime.registration.streaming  # renewed over one StreamHeartbeats stream, not unary calls

            # Stop while a call is in flight: the registry hears DRAINING until the call finishes.
            async with create_channel(runtime.address, agent_settings, kind="service", name="planner") as channel:
                request = agent_pb2.InvokeRequest(skill="hold")
                request.input.update({"label": "last"})
                in_flight = asyncio.ensure_future(agent_pb2_grpc.AgentServiceStub(channel).Invoke(request))
                await agent.entered.wait()
                stopping = asyncio.create_task(runtime.stop())

                async def draining() -> bool:
                    current = await instance_of(ops)
                    return current is not None and current.state == agent_pb2.SERVING_STATE_DRAINING

                await eventually(draining)
                agent.release.set()
                assert (await in_flight).output["label"] == "last"
                await stopping
            assert await instance_of(ops) is None  # deregistered at once, not left to expire
        finally:
            await runtime.stop(grace=0)


class MoodyEcho(EchoAgent):
    """An echo agent whose dependencies come and go (as Triton might)."""

    healthy = True

    async def ready(self) -> bool:
        return self.healthy


async def test_the_registry_hears_when_dependencies_go_and_come_back(
    registry: RegistryReplica, agent_settings: Settings
) -> None:
    agent = MoodyEcho(agent_settings)
    async with AgentRuntime(agent, port=0, registry_address=registry.address) as runtime, registry.client("client", "ops") as ops:
        async with asyncio.timeout(10):
            await runtime.wait_registered()

        def in_state(state: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                current = await instance_of(ops)
                return current is not None and current.state == state

            return check

        await eventually(in_state(agent_pb2.SERVING_STATE_SERVING))
        agent.healthy = False
        await eventually(in_state(agent_pb2.SERVING_STATE_NOT_SERVING))
        agent.healthy = True
        await eventually(in_state(agent_pb2.SERVING_STATE_SERVING))


async def test_a_lost_lease_is_registered_again(registry: RegistryReplica, agent_settings: Settings) -> None:
    async with AgentRuntime(EchoAgent(agent_settings), port=0, registry_address=registry.address) as runtime:
        registration = runtime.registration
        assert registration is not None
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        lost = registration.lease_id
        await registry.registry.deregister(lost, caller=None)  # as if the registry lost it (e.g. expired)

        async def registered_again() -> bool:
            return registration.registrations == 2 and registration.registered

        await eventually(registered_again)
        assert registration.lease_id != lost
        async with registry.client("client", "ops") as ops:
            instance = await instance_of(ops)
            assert instance is not None and instance.card.endpoint == runtime.address


async def test_an_agent_started_before_the_registry_registers_once_it_is_up(
    start_registry: StartRegistry, migrated_database_url: str, agent_settings: Settings
) -> None:
    port = free_port()
    async with AgentRuntime(EchoAgent(agent_settings), port=0, registry_address=f"127.0.0.1:{port}") as runtime:
        registration = runtime.registration
        assert registration is not None
        # It fails against the absent registry (and keeps serving); its breaker opens after a few failures.
        async def failed_repeatedly() -> bool:
            return registration.failures >= 6

        await eventually(failed_repeatedly)
        assert not registration.registered
        from agentmesh.services.registry import build_server

        server = build_server(registry_settings(agent_settings), port=port, database_url=migrated_database_url)
        await server.start()
        try:
            async with asyncio.timeout(15):
                await runtime.wait_registered()
        finally:
            await runtime.stop(grace=1)
            await server.stop(grace=0.5)


def registry_settings(settings: Settings) -> Settings:
    """Settings of a registry replica with the fast test timings."""
    from tests.fixtures.registry import FAST_REGISTRY

    return settings.replace(**FAST_REGISTRY)



async def lease_kept_alive(ops: RegistryClient) -> None:
    """The echo agent's lease is renewed well past its TTL (its expiry moves on by more than two TTLs)."""
    first = await instance_of(ops)
    assert first is not None
    first_expiry = first.lease_expire_time.ToNanoseconds()

    async def renewed() -> bool:
        current = await instance_of(ops)
        return current is not None and current.lease_expire_time.ToNanoseconds() > first_expiry + 2 * LEASE_TTL * 1e9

    await eventually(renewed)


@pytest.mark.parametrize("refusal", ["unimplemented", "policy"])
async def test_an_agent_falls_back_to_unary_heartbeats_when_the_registry_has_no_stream(
    start_registry: StartRegistry,
    migrated_database_url: str,
    agent_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    refusal: str,
) -> None:
    overrides = {}
    if refusal == "unimplemented":  # a registry built before StreamHeartbeats existed
        from agentmesh.services.registry.servicer import RegistryServicer

        monkeypatch.setattr(
            RegistryServicer, "StreamHeartbeats", registry_pb2_grpc.RegistryServiceServicer.StreamHeartbeats
        )
    else:  # an operator's authorization policy written before StreamHeartbeats existed
        policy = (Path(_policy.__file__).parent / "default_policy.yaml").read_text()
        older = tmp_path / "policy.yaml"
        older.write_text(policy.replace("      - /agentmesh.v1.RegistryService/StreamHeartbeats\n", ""))
        overrides["authz_policy_file"] = str(older)
    registry = await start_registry(migrated_database_url, **overrides)
    async with AgentRuntime(EchoAgent(agent_settings), port=0, registry_address=registry.address) as runtime, registry.client("client", "ops") as ops:
        registration = runtime.registration
        assert registration is not None
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        await lease_kept_alive(ops)
        assert not registration.streaming and registration.registrations == 1


async def test_a_broken_heartbeat_stream_is_reopened(
    start_registry: StartRegistry, migrated_database_url: str, agent_settings: Settings
) -> None:
    from agentmesh.services.registry import build_server

    registry = await start_registry(migrated_database_url)
    port = registry.server.port
    async with AgentRuntime(EchoAgent(agent_settings), port=0, registry_address=registry.address) as runtime:
        registration = runtime.registration
        assert registration is not None
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        await registry.server.stop(grace=0)  # the stream breaks under the agent

        async def failed() -> bool:
            return registration.failures >= 1

        await eventually(failed)
        server = build_server(registry.settings, port=port, database_url=migrated_database_url)
        await server.start()
        try:
            async with registry.client("client", "ops") as ops:
                async def serving_again() -> bool:
                    return await instance_of(ops) is not None

                await eventually(serving_again, within=15)
                await lease_kept_alive(ops)
            assert registration.streaming and registration.failures == 0
        finally:
            await runtime.stop(grace=1)
            await server.stop(grace=0.5)
