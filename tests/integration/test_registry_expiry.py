"""Exact lease expiry: an instance is never discoverable after its lease_expire_time (+100 ms of polling).

Heartbeats stay batched (renewals are flushed once per interval); the EXPIRED event and the stored state
follow within a flush interval. A replica that does not receive an agent's heartbeats still keeps it: it
looks the lease up in the database before hiding it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agentmesh._registry_client import RegistryClient
from agentmesh.v1 import registry_pb2
from tests.fixtures.registry import FAST_REGISTRY, RegistryReplica, StartRegistry, make_card
from tests.integration.test_registry import eventually

LEASE_TTL = 0.6
SLACK = 0.1  # the bound the issue sets: never discoverable after expiry + 100 ms


def _card(name: str) -> Any:
    card = make_card(name)
    card.spiffe_id = f"spiffe://agentmesh.test/agent/support/{name}"
    return card


async def _visible(ops: RegistryClient, name: str) -> tuple[bool, bool]:
    discovered = bool((await ops.discover(names=[f"support/{name}"])).candidates)
    got = bool((await ops.get_agent("support", name)).instances)
    return discovered, got


async def _expire_and_watch(
    ops: RegistryClient, agent: RegistryClient, name: str, ttl: float = LEASE_TTL
) -> float:
    """Heartbeat a little, stop, and check every answer around the expiry; returns when EXPIRED arrived."""
    lease = (await agent.register(_card(name), lease_ttl=ttl)).lease
    assert lease.ttl.ToNanoseconds() / 1e9 == pytest.approx(ttl)
    for _ in range(3):
        lease = await agent.heartbeat(lease.lease_id)
        await asyncio.sleep(ttl / 3)
    expires = lease.expire_time.ToNanoseconds() / 1e9
    expired_at: list[float] = []

    async def watch() -> None:
        async for event in ops.watch(namespace="support"):
            if event.type == registry_pb2.AGENT_EVENT_TYPE_EXPIRED:
                expired_at.append(time.time())
                return

    watcher = asyncio.create_task(watch())
    try:
        while time.time() < expires + 1.0:
            asked = time.time()
            discovered, got = await _visible(ops, name)
            if asked > expires + SLACK:
                assert not discovered and not got, f"still answered {asked - expires:.3f}s after expiry"
            elif time.time() < expires:
                assert discovered and got, "hidden before its lease expired"
            await asyncio.sleep(0.01)
        async with asyncio.timeout(2.0):
            await watcher
    finally:
        watcher.cancel()
    return expired_at[0] - expires


async def test_an_instance_is_never_answered_after_its_lease_expires(
    start_registry: StartRegistry, migrated_database_url: str
) -> None:
    flush = 0.5  # renewals batched every 0.5 s: expiry is still exact to the poll, EXPIRED within a flush
    registry = await start_registry(migrated_database_url, lease_flush_interval=flush)
    async with registry.client("agent", "support/lapsing") as agent, registry.client("client", "ops") as ops:
        late = await _expire_and_watch(ops, agent, "lapsing", ttl=2 * flush)
    assert late < flush + 0.2  # one flush interval, plus scheduling on a shared machine


@pytest.mark.postgres
async def test_a_replica_keeps_an_agent_heartbeating_elsewhere_and_drops_it_on_time(
    start_registry: StartRegistry, _postgres_migrated_pool: Any
) -> None:
    with _postgres_migrated_pool.database() as url:
        first = await start_registry(url)
        second = await start_registry(url)
        async with first.client("agent", "support/elsewhere") as agent, second.client("client", "ops") as ops:
            lease = (await agent.register(_card("elsewhere"), lease_ttl=LEASE_TTL)).lease

            async def known_on_second() -> bool:
                return bool((await ops.discover(names=["support/elsewhere"])).candidates)

            await eventually(known_on_second, 1.0, "the registration reaching the second replica")
            stop = time.monotonic() + 4 * LEASE_TTL
            while time.monotonic() < stop:  # renewals only reach the first replica (and its batched flush)
                await agent.heartbeat(lease.lease_id)
                assert await _visible(ops, "elsewhere") == (True, True)
                await asyncio.sleep(LEASE_TTL / 3)
            await _expire_and_watch(ops, agent, "elsewhere")


async def test_a_negative_lease_ttl_is_refused_and_a_clamped_one_reported(registry: RegistryReplica) -> None:
    from agentmesh._errors import InvalidArgumentError

    async with registry.client("agent", "support/clamped") as agent:
        with pytest.raises(InvalidArgumentError, match="lease_ttl"):
            await agent.register(_card("clamped"), lease_ttl=-1.0)
        granted = (await agent.register(_card("clamped"), lease_ttl=0.01)).lease.ttl
        assert granted.ToNanoseconds() / 1e9 == pytest.approx(FAST_REGISTRY["lease_ttl_min"])
