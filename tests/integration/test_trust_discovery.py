"""Discovery that cannot be stalled, and intents in any language (issue 10, items 5 and 6).

A caller who can reach the registry must not be able to stall it: visibility patterns are RE2 (linear time, no
backreferences), evaluated off the event loop within a budget, so a set of catastrophic-backtracking patterns
against 10,000 agents with unlucky names answers quickly or is refused, while health checks keep answering.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh._channel import create_channel
from agentmesh._errors import InvalidArgumentError
from tests.fixtures.registry import RegistryReplica, StartRegistry, make_card

pytestmark = pytest.mark.timeout(180)

# Patterns that make a backtracking engine run for seconds to minutes on names that are long runs of 'a'.
CATASTROPHIC = [
    r"(a+)+$",
    r"(a|aa)+b",
    r"(.*a){20}",
    r"([a-z]+)*!",
    r"(a*)*b",
    r"(a|a)*c",
    r"([a-z/]+)+1",
    r"(aa|a)+/(aa|a)+x",
    r".*a.{20}",  # defeats a DFA: RE2 falls back to its NFA
    r"(.*a){12}[0-9]{3}",
]
BACKREFERENCES = [r"(a+)\1", r"(?P<x>a)(?P=x)", r"(?=a)a", r"(?<!b)a", r"(a)(b)\2"]


def _adversarial_cards(count: int) -> list[Any]:
    """``count`` cards whose names are long runs of 'a' ending in digits (a backtracking engine's worst case)."""
    cards = []
    for i in range(count):
        namespace = "a" * (3 + i % 61)
        name = "a" * (40 + i % 18) + f"{i:05d}"
        card = make_card(name, namespace=namespace, description="Agent with an unlucky name.")
        cards.append(card)
    return cards


def _seed(path: Path, cards: list[Any], lease_seconds: float) -> None:
    """Write ``cards`` as registered, live instances into the SQLite database at ``path``, in one transaction.

    Set-up only: the rows are what RegisterAgent writes (10,000 RegisterAgent calls would take minutes here).
    """
    import copy
    import datetime as dt
    import uuid

    import sqlalchemy as sa
    from google.protobuf import json_format

    from agentmesh.services.registry.registry import card_hash
    from agentmesh.storage import Agent, AgentInstance, AgentLease, AgentSkill, AgentVersion

    now = dt.datetime.now(dt.UTC)
    agents, versions, skills, instances, leases = [], [], [], [], []
    for ix, card in enumerate(cards, start=1):
        stored = copy.deepcopy(card)
        stored.ClearField("endpoint")
        agents.append({"id": ix, "namespace": card.namespace, "name": card.name, "created_at": now})
        versions.append(
            {
                "id": ix,
                "agent_id": ix,
                "version": card.version,
                "purpose": card.purpose,
                "description": card.description,
                "policies": list(card.policies),
                "policy_mask": 0,
                "labels": dict(card.labels),
                "owner": card.owner,
                "spiffe_id": card.spiffe_id,
                "card": json_format.MessageToDict(stored, preserving_proto_field_name=True),
                "card_hash": card_hash(stored),
                "card_proto": stored.SerializeToString(deterministic=True),
                "created_at": now,
            }
        )
        for skill in card.skills:
            skills.append(
                {"agent_version_id": ix, "skill_name": skill.name, "description": skill.description}
            )
        instance_id = uuid.uuid4().hex
        instances.append(
            {
                "instance_id": instance_id,
                "lease_id": uuid.uuid4().hex,
                "agent_version_id": ix,
                "endpoint": card.endpoint,
                "state": "SERVING",
                "load": 0.0,
                "lease_ttl_seconds": lease_seconds,
                "registered_by": card.spiffe_id,
                "registered_at": now,
                "updated_at": now,
            }
        )
        leases.append({"instance_id": instance_id, "expires_at": now + dt.timedelta(seconds=lease_seconds)})
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        for model, rows in (
            (Agent, agents),
            (AgentVersion, versions),
            (AgentSkill, skills),
            (AgentInstance, instances),
            (AgentLease, leases),
        ):
            conn.execute(sa.insert(model.__table__), rows)  # type: ignore[attr-defined]
    engine.dispose()


@pytest.fixture
async def crowded_registry(
    start_registry: StartRegistry, sqlite_template: Path, tmp_path: Path
) -> RegistryReplica:
    """A replica that starts with 10,000 live agents in its database (loaded as its snapshot)."""
    path = tmp_path / "crowded.db"
    shutil.copyfile(sqlite_template, path)
    _seed(path, _adversarial_cards(10_000), lease_seconds=600.0)
    replica = await start_registry(f"sqlite:///{path}")
    assert len(replica.registry.index.instances) == 10_000
    return replica


async def test_catastrophic_patterns_answer_fast_or_are_refused_while_health_stays_fast(
    crowded_registry: RegistryReplica,
) -> None:
    channel = create_channel(crowded_registry.address, crowded_registry.settings, kind="client", name="ops")
    health = health_pb2_grpc.HealthStub(channel)
    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    checks: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            checks.append(time.perf_counter() - started)
            await asyncio.sleep(0)

    prober = asyncio.create_task(probe())
    outcomes: list[tuple[str, str, float]] = []
    try:
        async with crowded_registry.client("client", "ops") as ops:
            await ops.discover(patterns=["aaa/.*"])  # connection and code paths warm
            for pattern in CATASTROPHIC:
                for attempt in ("first", "again"):
                    started = time.perf_counter()
                    try:
                        await ops.discover(patterns=[pattern], max_results=5)
                        outcome = "answered"
                    except InvalidArgumentError:
                        outcome = "refused"
                    outcomes.append((f"{pattern} ({attempt})", outcome, time.perf_counter() - started))
            # Sixteen never-seen ones (the most a scope may hold) at once, twice.
            fresh = [f"{pattern}|z{i}" for i, pattern in enumerate((CATASTROPHIC * 2)[:16])]
            for attempt in ("first", "again"):
                started = time.perf_counter()
                try:
                    await ops.discover(patterns=fresh, max_results=5)
                    outcome = "answered"
                except InvalidArgumentError:
                    outcome = "refused"
                outcomes.append(
                    (f"16 new patterns at once ({attempt})", outcome, time.perf_counter() - started)
                )
    finally:
        stop.set()
        await prober
        await channel.close()
    print("\n".join(f"{what}: {outcome} in {seconds * 1000:.1f} ms" for what, outcome, seconds in outcomes))
    slow = [
        (what, f"{seconds * 1000:.1f} ms")
        for what, outcome, seconds in outcomes
        if outcome == "answered" and seconds >= 0.050
    ]
    assert not slow, f"answered, but not within 50 ms: {slow}"
    p99 = statistics.quantiles(checks, n=100)[98]
    print(f"health check p99 {p99 * 1000:.1f} ms over {len(checks)} checks")
    assert len(checks) > 20 and p99 < 0.050, f"health check p99 {p99 * 1000:.1f} ms over {len(checks)} checks"


async def test_a_pattern_re2_cannot_express_is_refused_with_a_readable_reason(
    registry: RegistryReplica,
) -> None:
    async with registry.client("client", "ops") as ops:
        for pattern in BACKREFERENCES:
            with pytest.raises(InvalidArgumentError) as refused:
                await ops.discover(patterns=["support/.*", pattern])
            assert refused.value.field == "visibility.patterns[1]"
            assert "not supported" in str(refused.value), str(refused.value)


async def test_a_thousand_clause_version_constraint_is_refused_or_bounded(registry: RegistryReplica) -> None:
    async with registry.client("agent", "support/triage") as agent:
        await agent.register(make_card("triage"))
    constraint = ",".join(f"!=0.{i}" for i in range(1000))
    async with registry.client("client", "ops") as ops:
        try:
            answer = await ops.discover(version_constraint=constraint)
        except InvalidArgumentError as refused:
            assert refused.field == "characteristics.version_constraint"
            assert len(str(refused)) < 500
        else:
            assert answer.ByteSize() < 8 * 1024
        # A constraint that is merely long and valid still gets a short reason.
        many = ",".join([">=0.1"] * 40)
        answer = await ops.discover(version_constraint=many)
        reasons = [r for c in answer.candidates for r in c.reasons]
        assert reasons and all(len(r) < 300 for r in reasons)


LANGUAGE_CARDS = [
    ("invoices-ja", "請求書を発行し、支払い状況を確認します。", "issue_invoice"),
    ("weather-ja", "天気予報と気温を調べます。", "forecast"),
    ("invoices-ru", "Выставляет счёт клиенту и проверяет оплату.", "issue_invoice"),
    ("shipping-ru", "Отслеживает доставку посылок по трек-номеру.", "track_parcel"),
    ("invoices-es", "Genera facturas y revisa los pagos del cliente en español.", "issue_invoice"),
    ("shipping-es", "Rastrea envíos y paquetes.", "track_parcel"),
    ("refunds-en", "Refunds damaged orders to the customer's card.", "refund_order"),
]


RANKED = [
    ("請求書を発行してください", "invoices-ja"),
    ("明日の天気を知りたい", "weather-ja"),
    ("Нужно выставить счет клиенту", "invoices-ru"),
    ("Где моя посылка? Отследить доставку", "shipping-ru"),
    ("¿Puedes generar las facturas del mes?", "invoices-es"),
    ("rastrear mis paquetes", "shipping-es"),
    ("refund a damaged order", "refunds-en"),
]
UNMATCHED = [
    "量子コンピュータの設計",
    "Запустить ракету на Луну",
    "construir un cohete espacial",
    "build a rocket",
]


async def _register_language_cards(registry: RegistryReplica) -> None:
    for name, description, skill in LANGUAGE_CARDS:
        async with registry.client("agent", f"support/{name}") as agent:
            await agent.register(make_card(name, description=description, skills=(skill,)))


async def test_intents_in_any_language_rank_the_agent_whose_card_says_it(registry: RegistryReplica) -> None:
    await _register_language_cards(registry)
    async with registry.client("client", "ops") as ops:
        for intent, expected in RANKED:
            answer = await ops.discover(intent=intent)
            ranked = [c.instance.card.name for c in answer.candidates]
            assert ranked and ranked[0] == expected, (intent, ranked)


async def test_an_intent_that_matches_nothing_gets_no_candidates_in_any_language(
    registry: RegistryReplica,
) -> None:
    await _register_language_cards(registry)
    async with registry.client("client", "ops") as ops:
        for intent in UNMATCHED:
            answer = await ops.discover(intent=intent)
            assert (list(answer.candidates), answer.matched_count) == ([], 0), intent
