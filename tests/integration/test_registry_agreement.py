"""Replicas agree: loads and call outcomes reported through one replica count on every replica.

Ranking uses load, and canary rollback counts outcomes; both travel through the change log, so the same query
at the same revision gives the same ranked answer, reasons included, on every replica, and a canary's
``min_requests`` counts the outcomes reported to all of them.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh._errors import NotFoundError
from agentmesh._registry_client import RegistryClient
from agentmesh.v1 import registry_pb2
from tests.fixtures.registry import RegistryReplica, StartRegistry, make_card
from tests.integration.test_registry import eventually

pytestmark = pytest.mark.postgres


def _card(name: str, version: str = "1.0.0", port: int = 9000) -> Any:
    card = make_card(name, version=version, port=port)
    card.spiffe_id = f"spiffe://agentmesh.test/agent/support/{name}"
    return card


def _answer(response: registry_pb2.DiscoverAgentsResponse) -> list[tuple[str, str, float, tuple[str, ...]]]:
    return [
        (c.instance.card.name, c.instance.instance_id, round(c.score, 6), tuple(c.reasons))
        for c in response.candidates
    ]


async def _replicas(start_registry: StartRegistry, url: str) -> tuple[RegistryReplica, RegistryReplica]:
    return await start_registry(url), await start_registry(url)


async def test_loads_reported_through_one_replica_rank_the_same_on_the_other(
    start_registry: StartRegistry, _postgres_migrated_pool: Any
) -> None:
    with _postgres_migrated_pool.database() as url:
        first, second = await _replicas(start_registry, url)
        async with (
            first.client("agent", "support/busy") as busy,
            second.client("agent", "support/idle") as idle,
            first.client("client", "ops") as ops_a,
            second.client("client", "ops") as ops_b,
        ):
            busy_lease = (await busy.register(_card("busy", port=9001))).lease.lease_id
            idle_lease = (await idle.register(_card("idle", port=9002))).lease.lease_id
            await busy.heartbeat(busy_lease, load=0.9)  # only the first replica hears it
            await idle.heartbeat(idle_lease, load=0.05)  # only the second replica hears it

            async def agree() -> bool:
                a = await ops_a.discover(skill="classify_ticket")
                b = await ops_b.discover(skill="classify_ticket")
                return _answer(a) == _answer(b) and [c.instance.card.name for c in a.candidates] == [
                    "idle",
                    "busy",
                ]

            await eventually(agree, 1.0, "both replicas ranking by both loads")
            reasons = " ".join((await ops_b.discover(skill="classify_ticket")).candidates[1].reasons)
            assert "load 0.90" in reasons


async def test_canary_outcomes_reported_to_both_replicas_count_together(
    start_registry: StartRegistry, _postgres_migrated_pool: Any
) -> None:
    with _postgres_migrated_pool.database() as url:
        first, second = await _replicas(start_registry, url)
        async with first.client("agent", "support/triage") as agent:
            await agent.register(_card("triage", "1.0.0", 9001))
            await agent.register(_card("triage", "2.0.0", 9002))
        async with first.client("client", "ops") as ops_a, second.client("client", "ops") as ops_b:
            await ops_a.set_routing(
                "support", "triage", {"1.0.0": 90, "2.0.0": 10}, max_error_rate=0.5, min_requests=4, window=60
            )
            await eventually(lambda: _has_policy(ops_b), 1.0, "the policy reaching the second replica")
            rolled = []
            async with (
                first.client("service", "planner") as via_a,
                second.client("service", "planner") as via_b,
            ):
                for planner in (via_a, via_b, via_a, via_b):  # 4 failures in all, never 4 on one replica
                    rolled.append(await planner.report_outcome("support", "triage", "2.0.0", success=False))
            assert rolled == [False, False, False, True]
            for ops in (ops_a, ops_b):

                async def rolled_back(ops: RegistryClient = ops) -> bool:
                    policy = await ops.get_routing("support", "triage")
                    return policy.weights["2.0.0"] == 0 and "4/4 calls failed" in policy.reason

                await eventually(rolled_back, 1.0, "the rollback on every replica")


async def _has_policy(ops: RegistryClient) -> bool:
    try:
        return (await ops.get_routing("support", "triage")).canary.min_requests == 4
    except NotFoundError:
        return False


async def test_a_replica_started_after_outcomes_were_reported_counts_them_too(
    start_registry: StartRegistry, _postgres_migrated_pool: Any
) -> None:
    """Replica B is stopped, three canary failures are reported through A, and B starts again: it rebuilt the
    counts from the change log at load, so it answers as A does and the fourth failure, reported to it, rolls the
    canary back (min_requests 4 counted over both replicas and B's restart)."""
    with _postgres_migrated_pool.database() as url:
        first, second = await _replicas(start_registry, url)
        async with first.client("agent", "support/triage") as agent:
            await agent.register(_card("triage", "1.0.0", 9001))
            await agent.register(_card("triage", "2.0.0", 9002))
        async with first.client("client", "ops") as ops_a:
            await ops_a.set_routing(
                "support", "triage", {"1.0.0": 90, "2.0.0": 10}, max_error_rate=0.5, min_requests=4, window=60
            )
            await second.server.stop(grace=0)  # B goes away before the outcomes
            async with first.client("service", "planner") as via_a:
                rolled = [await via_a.report_outcome("support", "triage", "2.0.0", success=False) for _ in range(3)]
            assert rolled == [False, False, False]
            restarted = await start_registry(url)  # B again: a fresh process state, loaded from the database
            async with restarted.client("client", "ops") as ops_b:
                for routing_key in ("alice", "bob", "carol"):
                    a = await ops_a.discover(skill="classify_ticket", routing_key=routing_key)
                    b = await ops_b.discover(skill="classify_ticket", routing_key=routing_key)
                    assert _answer(a) == _answer(b)
                async with restarted.client("service", "planner") as via_b:
                    assert await via_b.report_outcome("support", "triage", "2.0.0", success=False) is True
                for ops in (ops_a, ops_b):

                    async def rolled_back(ops: RegistryClient = ops) -> bool:
                        policy = await ops.get_routing("support", "triage")
                        return policy.weights["2.0.0"] == 0 and "4/4 calls failed" in policy.reason

                    await eventually(rolled_back, 1.0, "the rollback on both replicas")
