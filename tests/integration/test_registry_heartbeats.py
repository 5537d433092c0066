"""Long-lived registry streams (heartbeats, watch) over mTLS on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentmesh._errors import NotFoundError, PermissionDeniedError, UnavailableError
from agentmesh._registry_client import RegistryClient
from agentmesh.v1 import agent_pb2
from tests.fixtures.registry import RegistryReplica, make_card
from tests.integration.test_registry import eventually


async def discoverable(ops: RegistryClient, name: str) -> bool:
    """Whether discovery offers ``support/<name>``."""
    return bool((await ops.discover(names=[f"support/{name}"])).candidates)


async def test_stream_heartbeats_keep_leases_alive_past_their_ttl(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent, registry.client("client", "ops") as ops:
        # Two instances of one agent renewed over one stream (a stream carries any leases of its caller).
        first = (await agent.register(make_card("triage"), lease_ttl=0.5)).lease
        second = (await agent.register(make_card("triage", port=9001), lease_ttl=0.5)).lease
        stream = agent.heartbeat_stream()
        ends = time.monotonic() + 1.5
        while time.monotonic() < ends:  # three TTLs, renewed every 0.1 s
            for lease in (first, second):
                renewed = await stream.heartbeat(lease.lease_id, load=0.4)
                assert renewed.lease_id == lease.lease_id
                assert renewed.ttl.ToNanoseconds() == 500_000_000
                assert renewed.expire_time.ToNanoseconds() > lease.expire_time.ToNanoseconds()
            assert await discoverable(ops, "triage")
            await asyncio.sleep(0.1)
        view = await ops.get_agent("support", "triage")
        assert len(view.instances) == 2 and {i.load for i in view.instances} == {0.4}
        await stream.close()

        # Without the stream's heartbeats the same leases lapse within about a TTL.
        async def gone() -> bool:
            return not await discoverable(ops, "triage")

        await eventually(gone, 3.0, "expiry once the stream stopped")


async def test_unanswered_renewals_keep_a_lease_alive_and_a_refused_one_ends_the_stream(
    registry: RegistryReplica,
) -> None:
    async with registry.client("agent", "support/triage") as agent, registry.client("client", "ops") as ops:
        lease = (await agent.register(make_card("triage"), lease_ttl=0.5)).lease
        stream = agent.heartbeat_stream()
        ends = time.monotonic() + 1.5
        while time.monotonic() < ends:  # three TTLs kept alive by single messages nobody answers
            await stream.renew(lease.lease_id, load=0.3)
            await asyncio.sleep(0.1)
        assert await discoverable(ops, "triage")
        # An answered heartbeat after them sees the renewals applied in order (the load they carried).
        renewed = await stream.heartbeat(lease.lease_id, load=0.3)
        # Its own answer, not a queued answer to an earlier renewal (those would have expired a second ago).
        assert renewed.expire_time.ToNanoseconds() > time.time_ns() + 300_000_000
        assert (await ops.get_agent("support", "triage")).instances[0].load == pytest.approx(0.3)

        # A renewal the registry refuses ends the stream at once, though nobody waited for its answer:
        # the agent wakes up (wait_ended) and its next heartbeat raises why.
        await agent.deregister(lease.lease_id)
        await stream.renew(lease.lease_id)
        async with asyncio.timeout(5):
            await stream.wait_ended()
        with pytest.raises(NotFoundError, match="register again"):
            await stream.renew(lease.lease_id)
        assert stream.closed


async def test_a_stream_carrying_someone_elses_lease_is_refused(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent:
        lease = (await agent.register(make_card("triage"))).lease
    async with registry.client("agent", "support/impostor") as impostor:
        own = (await impostor.register(make_card("impostor"))).lease
        stream = impostor.heartbeat_stream()
        assert (await stream.heartbeat(own.lease_id)).lease_id == own.lease_id
        with pytest.raises(PermissionDeniedError, match="impostor") as refused:
            await stream.heartbeat(lease.lease_id)
        assert refused.value.metadata["identity"] == "spiffe://agentmesh.test/agent/support/impostor"
        assert refused.value.metadata["expected"] == "spiffe://agentmesh.test/agent/support/triage"
        assert stream.closed  # the refusal ends the stream; the caller opens a new one for its own leases
        again = impostor.heartbeat_stream()
        assert (await again.heartbeat(own.lease_id)).lease_id == own.lease_id
        await again.close()


async def test_an_unknown_lease_ends_the_stream_with_not_found(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent:
        lease = (await agent.register(make_card("triage"))).lease
        stream = agent.heartbeat_stream()
        await stream.heartbeat(lease.lease_id)
        await agent.deregister(lease.lease_id)  # as if it expired: the agent must register again
        with pytest.raises(NotFoundError, match="register again"):
            await stream.heartbeat(lease.lease_id)
        assert stream.closed
        with pytest.raises(NotFoundError):
            await agent.heartbeat_stream().heartbeat("no-such-lease")


async def test_draining_over_the_stream_removes_the_instance_from_discovery(
    registry: RegistryReplica,
) -> None:
    async with registry.client("agent", "support/triage") as agent, registry.client("client", "ops") as ops:
        lease = (await agent.register(make_card("triage"))).lease
        stream = agent.heartbeat_stream()
        await stream.heartbeat(lease.lease_id, load=0.2)
        assert await discoverable(ops, "triage")
        await stream.heartbeat(lease.lease_id, state=agent_pb2.SERVING_STATE_DRAINING)
        assert not await discoverable(ops, "triage")
        listed = await ops.list_agents(include_not_serving=True)
        assert [i.state for i in listed.instances] == [agent_pb2.SERVING_STATE_DRAINING]
        await stream.heartbeat(lease.lease_id, state=agent_pb2.SERVING_STATE_SERVING)
        assert await discoverable(ops, "triage")
        await stream.close()


async def test_only_agents_may_open_a_heartbeat_stream(registry: RegistryReplica) -> None:
    async with registry.client("client", "ops") as ops:
        with pytest.raises(PermissionDeniedError, match="StreamHeartbeats"):
            await ops.heartbeat_stream().heartbeat("any-lease")


async def test_a_stopping_replica_ends_heartbeat_streams_at_once(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent:
        lease = (await agent.register(make_card("triage"))).lease
        stream = agent.heartbeat_stream()
        await stream.heartbeat(lease.lease_id)
        started = time.monotonic()
        await registry.server.stop(grace=10)
        assert time.monotonic() - started < 5  # not held for the whole grace by the open stream
        with pytest.raises(UnavailableError, match="stopping"):
            await stream.heartbeat(lease.lease_id)


async def test_a_stopping_replica_ends_watch_streams_at_once(registry: RegistryReplica) -> None:
    async with registry.client("client", "ops") as ops:
        events = ops.watch()
        first = await anext(events)  # the snapshot has begun: the stream is open
        assert first.revision >= 0
        started = time.monotonic()
        await registry.server.stop(grace=10)
        assert time.monotonic() - started < 5  # not held for the whole grace by the open watch
        with pytest.raises(UnavailableError, match="watch again from your last revision"):
            async with asyncio.timeout(5):
                async for _ in events:
                    pass
