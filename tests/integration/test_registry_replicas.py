"""Two registry replicas on one PostgreSQL agree: discovery answers, watch streams, expiry announced once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from agentmesh.storage import create_async_engine
from agentmesh.v1 import registry_pb2
from tests.fixtures.registry import RegistryReplica, StartRegistry, make_card
from tests.integration.test_registry import eventually

pytestmark = pytest.mark.postgres

Replicas = tuple[RegistryReplica, RegistryReplica, str]


@pytest.fixture
async def replicas(start_registry: StartRegistry, _postgres_migrated_pool: Any) -> AsyncIterator[Replicas]:
    with _postgres_migrated_pool.database() as url:
        first = await start_registry(url)
        second = await start_registry(url)
        yield first, second, url


def _answer(response: registry_pb2.DiscoverAgentsResponse) -> list[tuple[str, str, float, tuple[str, ...]]]:
    # Reasons included: they name the routing decision, so a policy one replica has not applied yet shows.
    return [
        (c.instance.card.name, c.instance.card.version, round(c.score, 4), tuple(c.reasons))
        for c in response.candidates
    ]


async def test_two_replicas_give_the_same_discovery_answers(replicas: Replicas) -> None:
    first, second, _ = replicas
    for index in range(6):
        name = f"triage-{index}"
        target = first if index % 2 else second
        async with target.client("agent", f"support/{name}") as agent:
            await agent.register(
                make_card(
                    name,
                    policies=("pii:allowed",) if index % 3 else (),
                    description=f"Triage tickets {index}.",
                )
            )
    async with first.client("client", "ops") as ops_a, second.client("client", "ops") as ops_b:
        await ops_a.set_routing("support", "triage-1", {"1.0.0": 100}, reason="pin")
        queries: list[dict[str, Any]] = [
            {"skill": "classify_ticket", "max_results": 20},
            {"patterns": ["support/triage-[0-3]"], "required_policies": ["pii:allowed"]},
            {"intent": "triage tickets 4"},
        ]

        async def agree() -> bool:
            for query in queries:
                a = await ops_a.discover(**query)
                b = await ops_b.discover(**query)
                if _answer(a) != _answer(b) or a.visible_count != b.visible_count:
                    return False
            return len((await ops_b.discover(skill="classify_ticket", max_results=20)).candidates) == 6

        await eventually(agree, 1.0, "replicas agreeing")
        assert (await ops_b.get_routing("support", "triage-1")).reason == "pin"


async def test_watch_on_one_replica_sees_registrations_through_the_other(replicas: Replicas) -> None:
    first, second, _ = replicas
    types = registry_pb2.AgentEventType
    async with second.client("client", "ops") as ops:
        stream = ops.watch()
        async for event in stream:
            if event.type == types.Value("AGENT_EVENT_TYPE_SNAPSHOT_END"):
                break
        async with first.client("agent", "support/refunds") as agent:
            lease = (await agent.register(make_card("refunds", purpose="refunds"))).lease
            event = await asyncio.wait_for(anext(stream), 1.0)
            assert event.type == types.Value("AGENT_EVENT_TYPE_REGISTERED")
            assert event.instance.card.name == "refunds"
            # A heartbeat may land on either replica.
            async with second.client("agent", "support/refunds") as same_agent:
                await same_agent.heartbeat(lease.lease_id, load=0.5)
            await agent.deregister(lease.lease_id)
            event = await asyncio.wait_for(anext(stream), 1.0)
            assert event.type == types.Value("AGENT_EVENT_TYPE_DEREGISTERED")
        await stream.aclose()


async def test_a_lease_renewed_through_one_replica_expires_nowhere_and_expiry_is_announced_once(
    replicas: Replicas,
) -> None:
    first, second, url = replicas
    async with first.client("agent", "support/triage") as agent:
        lease = (await agent.register(make_card("triage"), lease_ttl=1.0)).lease
    async with second.client("agent", "support/triage") as agent, second.client("client", "ops") as ops:
        for _ in range(25):  # 2.5 TTLs of heartbeats through the replica that did not register it
            await agent.heartbeat(lease.lease_id)
            assert (await ops.discover(skill="classify_ticket")).candidates
            await asyncio.sleep(0.1)
    async with first.client("client", "ops") as ops_a, second.client("client", "ops") as ops_b:

        async def gone_everywhere() -> bool:
            return (
                not (await ops_a.discover(skill="classify_ticket")).candidates
                and not (await ops_b.discover(skill="classify_ticket")).candidates
            )

        await eventually(gone_everywhere, 3.0, "expiry on both replicas")
    engine = create_async_engine(url)

    async def expired_events() -> int:
        async with engine.connect() as conn:
            return int(
                await conn.scalar(sa.text("SELECT count(*) FROM registry_events WHERE event_type = 'EXPIRED'"))
                or 0
            )

    try:
        # Answers drop the instance at its expiry; the EXPIRED event follows within a flush interval.
        await eventually(lambda: _positive(expired_events()), 1.0, "the EXPIRED event")
        await asyncio.sleep(3 * first.settings.lease_flush_interval)  # both replicas have swept since
        assert await expired_events() == 1
    finally:
        await engine.dispose()


async def _positive(count: Any) -> bool:
    return bool(await count)
