"""The registry over mTLS on SQLite and PostgreSQL: cards, leases, discovery, routing, watch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from agentmesh._errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from agentmesh.v1 import agent_pb2, registry_pb2
from tests.fixtures.registry import RegistryReplica, make_card


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``check`` until it holds; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {within}s")


async def test_register_is_idempotent_and_a_different_card_conflicts(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent:
        first = await agent.register(make_card("triage"))
        again = await agent.register(make_card("triage"))
        assert again.instance.instance_id == first.instance.instance_id
        assert again.lease.lease_id == first.lease.lease_id

        changed = make_card("triage", description="Something else entirely.")
        with pytest.raises(AlreadyExistsError, match="different card"):
            await agent.register(changed)

        # A second endpoint of the same version is a second instance.
        other = await agent.register(make_card("triage", port=9001))
        assert other.instance.instance_id != first.instance.instance_id
        got = await agent.get_agent("support", "triage")
        assert sorted(i.card.endpoint for i in got.instances) == ["127.0.0.1:9000", "127.0.0.1:9001"]


async def test_a_different_card_is_accepted_once_the_old_lease_expired(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent:
        await agent.register(make_card("triage"), lease_ttl=0.3)

        async def replaced() -> bool:
            try:
                await agent.register(make_card("triage", description="A new card for the same version."))
            except AlreadyExistsError:
                return False
            return True

        await eventually(replaced, 5.0, "re-registration after expiry")
        got = await agent.get_agent("support", "triage", "1.0.0")
        assert got.card.description == "A new card for the same version."


async def test_an_agent_cannot_register_someone_elses_card(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/impostor") as impostor:
        with pytest.raises(PermissionDeniedError, match="impostor"):
            await impostor.register(make_card("triage"))
    async with registry.client("agent", "support/triage") as agent:
        lease = (await agent.register(make_card("triage"))).lease
    async with registry.client("agent", "support/impostor") as impostor:
        with pytest.raises(PermissionDeniedError):
            await impostor.heartbeat(lease.lease_id)
        with pytest.raises(PermissionDeniedError):
            await impostor.deregister(lease.lease_id)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: setattr(c, "name", "Bad_Name"), "card.name"),
        (lambda c: setattr(c, "version", "1.0.0-rc1"), "card.version"),
        (lambda c: setattr(c, "endpoint", "nowhere"), "card.endpoint"),
        (lambda c: c.policies.append("no colon"), "card.policies[0]"),
        (lambda c: c.skills[0].input_schema.update({"type": "no-such-type"}), "card.skills[0].input_schema"),
        (lambda c: c.skills[0].output_schema.update({"properties": 3}), "card.skills[0].output_schema"),
    ],
)
async def test_a_bad_card_is_refused_naming_the_field(
    registry: RegistryReplica, mutate: Callable[[agent_pb2.AgentCard], None], field: str
) -> None:
    card = make_card("triage")
    mutate(card)
    async with registry.client("agent", "support/triage") as agent:
        with pytest.raises(InvalidArgumentError) as refused:
            await agent.register(card)
    assert refused.value.field == field


async def test_a_bad_visibility_regex_is_refused_naming_the_field(registry: RegistryReplica) -> None:
    async with registry.client("client", "ops") as ops:
        with pytest.raises(InvalidArgumentError) as refused:
            await ops.discover(patterns=["support/.*", "support/(unclosed"])
        assert refused.value.field == "visibility.patterns[1]"
        with pytest.raises(InvalidArgumentError) as refused:
            await ops.discover(patterns=["x" * 300])
        assert refused.value.field == "visibility.patterns[0]"
        with pytest.raises(InvalidArgumentError) as refused:
            await ops.discover(version_constraint=">>1")
        assert refused.value.field == "characteristics.version_constraint"


async def test_discovery_narrows_by_both_scopes_and_explains(registry: RegistryReplica) -> None:
    cards = [
        make_card("triage", policies=("pii:allowed", "region:eu"), labels={"team": "support"}),
        make_card("triage-us", policies=("pii:allowed", "region:us")),
        make_card(
            "refunds",
            purpose="refunds",
            skills=("refund_order",),
            description="Refunds damaged or lost orders to the customer's card.",
            policies=("pii:allowed", "region:eu"),
        ),
        make_card(
            "billing",
            namespace="finance",
            purpose="refunds",
            skills=("refund_order",),
            description="Invoices.",
        ),
    ]
    for card in cards:
        async with registry.client("agent", f"{card.namespace}/{card.name}") as agent:
            await agent.register(card)
    async with registry.client("client", "ops") as ops:
        answer = await ops.discover(
            patterns=["support/.*"], skill="classify_ticket", required_policies=["pii:allowed", "region:eu"]
        )
        assert [c.instance.card.name for c in answer.candidates] == ["triage"]
        assert answer.visible_count == 3 and answer.matched_count == 1
        reasons = " | ".join(answer.candidates[0].reasons)
        assert "support/triage matches 'support/.*'" in reasons
        assert "policies hold: pii:allowed, region:eu" in reasons
        assert answer.candidates[0].matched_skill == "classify_ticket"

        ranked = await ops.discover(intent="refund my damaged order")
        assert ranked.candidates[0].instance.card.name == "refunds"
        assert ranked.candidates[0].matched_skill == "refund_order"
        assert any("intent matched: refund, damaged, order" in r for r in ranked.candidates[0].reasons)
        assert [c.score for c in ranked.candidates] == sorted(
            (c.score for c in ranked.candidates), reverse=True
        )

        named = await ops.discover(names=["finance/billing"], purpose="refunds")
        assert [c.instance.card.name for c in named.candidates] == ["billing"]
        assert (await ops.discover(labels={"team": "support"})).candidates[0].instance.card.name == "triage"
        assert not (await ops.discover(version_constraint=">=2")).candidates


async def test_an_expired_lease_disappears_from_discovery(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent:
        response = await agent.register(make_card("triage"), lease_ttl=0.5)
        assert response.lease.ttl.ToNanoseconds() == 500_000_000
    async with registry.client("client", "ops") as ops:
        assert (await ops.discover(skill="classify_ticket")).candidates

        async def gone() -> bool:
            return not (await ops.discover(skill="classify_ticket")).candidates

        # Expiry at 0.5 s, judged with a grace of two flushes (0.2 s): gone well within one more TTL.
        took = await eventually(gone, 3.0, "expiry")
        assert took < 0.5 + 0.5 + 0.3
        with pytest.raises(NotFoundError):
            await ops.get_agent("support", "triage", "9.9.9")


async def test_heartbeats_keep_a_short_lease_alive_and_draining_hides_it(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent, registry.client("client", "ops") as ops:
        lease = (await agent.register(make_card("triage"), lease_ttl=1.0)).lease
        ends = time.monotonic() + 2.5
        while time.monotonic() < ends:  # 2.5 TTLs, renewed every 0.1 s (slack for a loaded machine)
            renewed = await agent.heartbeat(lease.lease_id, load=0.3)
            assert renewed.lease_id == lease.lease_id
            assert (await ops.discover(skill="classify_ticket")).candidates
            await asyncio.sleep(0.1)
        await agent.heartbeat(lease.lease_id, state=agent_pb2.SERVING_STATE_DRAINING)
        assert not (await ops.discover(skill="classify_ticket")).candidates
        listed = await ops.list_agents(include_not_serving=True)
        assert [i.state for i in listed.instances] == [agent_pb2.SERVING_STATE_DRAINING]
        await agent.deregister(lease.lease_id)
        assert not (await ops.list_agents(include_not_serving=True)).instances
        with pytest.raises(NotFoundError):
            await agent.heartbeat(lease.lease_id)


async def test_list_agents_pages_through_every_instance(registry: RegistryReplica) -> None:
    for index in range(7):
        async with registry.client("agent", f"support/worker-{index}") as agent:
            await agent.register(make_card(f"worker-{index}"))
    async with registry.client("client", "ops") as ops:
        seen: list[str] = []
        token = ""
        while True:
            page = await ops.list_agents(page_size=3, page_token=token)
            assert len(page.instances) <= 3
            seen += [i.card.name for i in page.instances]
            token = page.next_page_token
            if not token:
                break
        assert seen == [f"worker-{i}" for i in range(7)]
        assert [i.card.name for i in (await ops.list_agents(name_prefix="worker-1")).instances] == [
            "worker-1"
        ]
        with pytest.raises(InvalidArgumentError) as refused:
            await ops.list_agents(page_token="garbage")
        assert refused.value.field == "page_token"


async def _register_versions(registry: RegistryReplica, versions: dict[str, int]) -> None:
    async with registry.client("agent", "support/triage") as agent:
        for port, version in enumerate(versions, start=9100):
            await agent.register(make_card("triage", version=version, port=port))


async def test_sticky_routing_by_weight_per_key(registry: RegistryReplica) -> None:
    await _register_versions(registry, {"1.0.0": 90, "1.1.0": 10})
    async with registry.client("client", "ops") as ops:
        without_policy = await ops.discover(skill="classify_ticket", routing_key="task-1")
        assert without_policy.candidates[0].instance.card.version == "1.1.0"  # highest wins without a policy
        await ops.set_routing("support", "triage", {"1.0.0": 90, "1.1.0": 10}, reason="canary 1.1.0")
        chosen: dict[str, str] = {}
        for key in (f"task-{i}" for i in range(200)):
            answer = await ops.discover(skill="classify_ticket", routing_key=key)
            chosen[key] = answer.candidates[0].instance.card.version
            assert any("routing: version" in r and "sticky" in r for r in answer.candidates[0].reasons)
        canary_share = sum(v == "1.1.0" for v in chosen.values()) / len(chosen)
        assert 0.03 < canary_share < 0.2
        for key in list(chosen)[:50]:  # the same key keeps its version
            answer = await ops.discover(skill="classify_ticket", routing_key=key)
            assert answer.candidates[0].instance.card.version == chosen[key]
        pinned = await ops.discover(skill="classify_ticket", version_constraint="<1.1", routing_key="task-x")
        assert pinned.candidates[0].instance.card.version == "1.0.0"


async def test_canary_is_rolled_back_when_its_error_rate_is_too_high(registry: RegistryReplica) -> None:
    await _register_versions(registry, {"1.0.0": 90, "1.1.0": 10})
    async with registry.client("client", "ops") as ops:
        await ops.set_routing(
            "support", "triage", {"1.0.0": 90, "1.1.0": 10}, max_error_rate=0.2, min_requests=10, window=60
        )
        watch = ops.watch()
        async for event in watch:
            if event.type == registry_pb2.AGENT_EVENT_TYPE_SNAPSHOT_END:
                break
        async with registry.client("service", "planner") as planner:
            # The baseline failing does not roll anything back; healthy canary calls neither.
            for _ in range(20):
                assert not await planner.report_outcome("support", "triage", "1.0.0", success=False)
            for _ in range(5):
                assert not await planner.report_outcome("support", "triage", "1.1.0", success=True)
            rolled = [
                await planner.report_outcome("support", "triage", "1.1.0", success=False) for _ in range(5)
            ]
            assert rolled == [False, False, False, False, True]  # 5/10 failed > 0.2 once 10 outcomes are in
        # Watchers are told at once, with the reason.
        change = await asyncio.wait_for(anext(watch), 5)
        assert change.type == registry_pb2.AGENT_EVENT_TYPE_ROUTING_CHANGED
        assert dict(change.routing_policy.weights) == {"1.0.0": 90, "1.1.0": 0}
        assert "canary 1.1.0 rolled back to weight 0" in change.reason
        await watch.aclose()  # type: ignore[attr-defined]
        policy = await ops.get_routing("support", "triage")
        assert dict(policy.weights) == {"1.0.0": 90, "1.1.0": 0}
        assert "error rate 0.50 > 0.20" in policy.reason
        for key in (f"task-{i}" for i in range(50)):
            answer = await ops.discover(skill="classify_ticket", routing_key=key)
            assert answer.candidates[0].instance.card.version == "1.0.0"


async def test_routing_policy_is_validated(registry: RegistryReplica) -> None:
    async with registry.client("client", "ops") as ops:
        with pytest.raises(InvalidArgumentError) as refused:
            await ops.set_routing("support", "triage", {"v1": 100})
        assert refused.value.field == "policy.weights[v1]"
        with pytest.raises(NotFoundError):
            await ops.get_routing("support", "nobody")
    async with registry.client("agent", "support/triage") as agent:
        with pytest.raises(PermissionDeniedError):  # only ops clients set routing
            await agent.set_routing("support", "triage", {"1.0.0": 100})


async def test_watch_streams_a_snapshot_then_changes_and_resumes(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent:
        lease = (await agent.register(make_card("triage"))).lease
    async with registry.client("client", "ops") as ops:
        events: list[registry_pb2.WatchAgentsResponse] = []
        stream = ops.watch()
        types = registry_pb2.AgentEventType

        async def read_until(kind: int) -> registry_pb2.WatchAgentsResponse:
            async for event in stream:
                events.append(event)
                if event.type == kind:
                    return event
            raise AssertionError("stream ended")

        end = await asyncio.wait_for(read_until(types.Value("AGENT_EVENT_TYPE_SNAPSHOT_END")), 5)
        assert [e.type for e in events[:-1]] == [types.Value("AGENT_EVENT_TYPE_SNAPSHOT")]
        assert events[0].instance.card.name == "triage"
        async with registry.client("agent", "support/refunds") as other:
            await other.register(make_card("refunds", purpose="refunds"))
        registered = await asyncio.wait_for(read_until(types.Value("AGENT_EVENT_TYPE_REGISTERED")), 5)
        assert registered.instance.card.name == "refunds" and registered.revision > end.revision
        async with registry.client("agent", "support/triage") as agent:
            await agent.deregister(lease.lease_id)
        gone = await asyncio.wait_for(read_until(types.Value("AGENT_EVENT_TYPE_DEREGISTERED")), 5)
        assert gone.instance.card.name == "triage"
        await stream.aclose()

        # Resume after the snapshot: exactly the two changes, in order.
        resumed = ops.watch(since_revision=end.revision)
        replay = [await asyncio.wait_for(anext(resumed), 5) for _ in range(2)]
        assert [e.revision for e in replay] == [registered.revision, gone.revision]
        assert [e.type for e in replay] == [registered.type, gone.type]
        await resumed.aclose()


async def test_the_basic_view_answers_the_same_candidates_with_lighter_cards(
    registry: RegistryReplica,
) -> None:
    async with registry.client("agent", "support/refunds") as agent:
        card = make_card("refunds", skills=("refund_order", "track_order"), policies=("pii:allowed",))
        card.skills[0].tags.append("money")
        await agent.register(card)
    async with registry.client("client", "ops") as ops:
        query = {
            "intent": "refund a damaged order",
            "required_policies": ["pii:allowed"],
            "routing_key": "t-1",
        }
        full = await ops.discover(**query)
        assert full == await ops.discover(**query, view=registry_pb2.INSTANCE_VIEW_FULL)
        basic = await ops.discover(**query, view=registry_pb2.INSTANCE_VIEW_BASIC)
        assert [(c.score, list(c.reasons), c.matched_skill) for c in basic.candidates] == [
            (c.score, list(c.reasons), c.matched_skill) for c in full.candidates
        ]
        got, whole = basic.candidates[0].instance, full.candidates[0].instance
        assert whole.card.description and whole.card.skills[0].input_schema.fields
        assert got.instance_id == whole.instance_id and got.card.endpoint == whole.card.endpoint
        assert (got.card.name, got.card.version, got.card.spiffe_id) == (
            whole.card.name,
            whole.card.version,
            whole.card.spiffe_id,
        )
        assert [s.name for s in got.card.skills] == ["refund_order", "track_order"]
        assert list(got.card.skills[0].tags) == ["money"]
        assert not got.card.description
        assert not any(
            s.description or s.HasField("input_schema") or s.HasField("output_schema")
            for s in got.card.skills
        )
        assert got.card.ByteSize() < whole.card.ByteSize() / 2
        with pytest.raises(InvalidArgumentError) as refused:
            await ops.discover(view=7)
        assert refused.value.field == "view"
