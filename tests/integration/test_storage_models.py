"""The models on real SQLite and PostgreSQL: what each group of tables stores and refuses."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from agentmesh import storage
from agentmesh.storage import (
    Agent,
    AgentInstance,
    AgentLease,
    AgentSkill,
    AgentVersion,
    AuditRecord,
    CollaboratorChoice,
    Conversation,
    ConversationMessage,
    ParameterSubstitution,
    Plan,
    PlanStep,
    PolicyBit,
    RegistryEvent,
    RoutingPolicy,
    StepAttempt,
    Task,
)

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = storage.create_async_engine(migrated_database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    return storage.async_session_factory(engine)


def _id() -> str:
    return uuid.uuid4().hex


async def _register(sessions: Sessions, name: str = "triage", instances: int = 1) -> AgentVersion:
    async with sessions.begin() as session:
        agent = Agent(namespace="support", name=name)
        version = AgentVersion(
            agent=agent,
            version="1.2.0",
            purpose="ticket-triage",
            description="Sorts support tickets by urgency.",
            policies=["pii:allowed", "region:eu"],
            policy_mask=0b11,
            labels={"team": "support"},
            spiffe_id=f"spiffe://agentmesh.local/agent/{name}",
            card={"name": name, "skills": ["classify_ticket"]},
            skills=[
                AgentSkill(
                    skill_name="classify_ticket",
                    description="Classify a ticket.",
                    input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
                    output_schema={"type": "object"},
                )
            ],
        )
        for _ in range(instances):
            instance_id = _id()
            version.instances.append(
                AgentInstance(
                    instance_id=instance_id,
                    lease_id=_id(),
                    endpoint="127.0.0.1:9000",
                    lease_ttl_seconds=10.0,
                    lease=AgentLease(
                        instance_id=instance_id, expires_at=storage.utcnow() + dt.timedelta(seconds=10)
                    ),
                )
            )
        session.add(version)
    return version


async def test_a_registered_card_is_found_by_skill_with_its_instances_and_lease(sessions: Sessions) -> None:
    await _register(sessions)
    async with sessions() as session:
        found = (
            await session.scalars(
                sa.select(AgentVersion)
                .join(AgentSkill)
                .where(
                    AgentSkill.skill_name == "classify_ticket", AgentVersion.policy_mask.op("&")(0b10) == 0b10
                )
                .options(
                    selectinload(AgentVersion.agent),
                    selectinload(AgentVersion.skills),
                    selectinload(AgentVersion.instances).selectinload(AgentInstance.lease),
                )
            )
        ).one()
    assert (found.agent.namespace, found.agent.name, found.version) == ("support", "triage", "1.2.0")
    assert found.policies == ["pii:allowed", "region:eu"]
    assert found.labels == {"team": "support"}
    assert found.skills[0].input_schema["properties"]["text"] == {"type": "string"}
    [instance] = found.instances
    assert instance.state == "SERVING"
    assert instance.lease is not None
    assert instance.lease.expires_at.tzinfo is not None
    assert instance.registered_at.tzinfo is not None


async def test_an_agent_name_is_unique_per_namespace(sessions: Sessions) -> None:
    await _register(sessions)
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(Agent(namespace="support", name="triage"))
    async with sessions.begin() as session:
        session.add(Agent(namespace="billing", name="triage"))


async def test_deleting_an_agent_removes_its_versions_skills_instances_and_leases(sessions: Sessions) -> None:
    await _register(sessions, instances=2)
    async with sessions.begin() as session:
        await session.execute(sa.delete(Agent).where(Agent.name == "triage"))
    async with sessions() as session:
        for model in (AgentVersion, AgentSkill, AgentInstance, AgentLease):
            assert await session.scalar(sa.select(sa.func.count()).select_from(model)) == 0


async def test_heartbeats_are_flushed_to_the_lease_table_in_one_statement(
    sessions: Sessions, engine: AsyncEngine
) -> None:
    version = await _register(sessions, instances=50)
    ids = [instance.instance_id for instance in version.instances]
    later = storage.utcnow() + dt.timedelta(minutes=5)
    async with sessions.begin() as session:
        if engine.dialect.name == "postgresql":
            result = await session.execute(
                sa.text(
                    "UPDATE agent_leases AS l SET expires_at = u.expires_at "
                    "FROM unnest(CAST(:ids AS text[]), CAST(:expiries AS timestamptz[])) AS u(instance_id, expires_at) "
                    "WHERE l.instance_id = u.instance_id"
                ),
                {"ids": ids, "expiries": [later] * len(ids)},
            )
            assert result.rowcount == len(ids)  # type: ignore[attr-defined]
        else:
            await session.execute(
                sa.update(AgentLease),
                [{"instance_id": instance_id, "expires_at": later} for instance_id in ids],
            )
    async with sessions() as session:
        expiries = (await session.scalars(sa.select(AgentLease.expires_at))).all()
    assert len(expiries) == 50
    assert all(abs(expiry - later) < dt.timedelta(milliseconds=1) for expiry in expiries)


async def test_registry_events_get_increasing_revisions_and_policies_bits(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        session.add_all(
            RegistryEvent(event_type="REGISTERED", instance_id=str(i), payload={"i": i}) for i in range(3)
        )
        session.add(RoutingPolicy(namespace="support", name="triage", weights={"1.0.0": 90, "1.1.0": 10}))
        session.add_all([PolicyBit(policy="pii:allowed", bit=0), PolicyBit(policy="region:eu", bit=1)])
    async with sessions() as session:
        events = (await session.scalars(sa.select(RegistryEvent).order_by(RegistryEvent.revision))).all()
        policy = await session.get(RoutingPolicy, ("support", "triage"))
    assert [event.payload["i"] for event in events] == [0, 1, 2]
    assert events[0].revision < events[1].revision < events[2].revision
    assert policy is not None
    assert policy.weights == {"1.0.0": 90, "1.1.0": 10}
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(PolicyBit(policy="tier:gold", bit=1))


async def test_a_task_keeps_its_plan_steps_attempts_and_explanation(sessions: Sessions) -> None:
    task_id, plan_id = _id(), _id()
    async with sessions.begin() as session:
        session.add(
            Task(task_id=task_id, goal="triage ticket 7", input={"ticket": 7}, submitted_by="spiffe://x")
        )
        session.add(Task(task_id=_id(), goal="sub-task", parent_task_id=task_id))
        await session.flush()
        plan = Plan(
            plan_id=plan_id,
            task_id=task_id,
            strategy="PLAYBOOK",
            content_hash="a" * 64,
            plan={"steps": [{"step_id": "classify"}]},
            steps=[PlanStep(task_id=task_id, step_id="classify", state="READY", max_attempts=3)],
        )
        session.add(plan)
        await session.flush()
        attempts = await plan.steps[0].awaitable_attrs.attempts
        attempts.append(
            StepAttempt(task_id=task_id, step_id="classify", attempt=1, agent_name="triage", state="FAILED")
        )
        session.add(
            CollaboratorChoice(
                task_id=task_id, plan_id=plan_id, step_id="classify", chosen={"name": "triage"}
            )
        )
        session.add(
            ParameterSubstitution(
                task_id=task_id,
                step_id="classify",
                template="${task.input.ticket}",
                value=7,
                source="task.input",
            )
        )
    async with sessions() as session:
        loaded = await session.get(Task, task_id, options=[selectinload(Task.plans).selectinload(Plan.steps)])
        assert loaded is not None
        [attempt] = (
            await session.scalars(sa.select(StepAttempt).where(StepAttempt.task_id == task_id))
        ).all()
        [substitution] = (await session.scalars(sa.select(ParameterSubstitution))).all()
        children = (await session.scalars(sa.select(Task.goal).where(Task.parent_task_id == task_id))).all()
    assert loaded.state == "PENDING"
    assert loaded.input == {"ticket": 7}
    assert loaded.plans[0].steps[0].state == "READY"
    assert loaded.plans[0].steps[0].attempt_count == 0
    assert (attempt.attempt, attempt.state) == (1, "FAILED")
    assert substitution.value == 7
    assert children == ["sub-task"]


async def test_a_state_outside_the_lifecycle_is_refused(sessions: Sessions) -> None:
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(Task(task_id=_id(), state="DONE"))


async def test_naive_datetimes_are_refused(sessions: Sessions) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        async with sessions.begin() as session:
            session.add(Task(task_id=_id(), created_at=dt.datetime(2026, 1, 1)))


async def test_a_stale_conversation_version_updates_nothing(sessions: Sessions) -> None:
    conversation_id = _id()
    async with sessions.begin() as session:
        session.add(Conversation(conversation_id=conversation_id, title="refund"))

    async def write(expected_version: int) -> bool:
        async with sessions.begin() as session:
            result = await session.execute(
                sa.update(Conversation)
                .where(
                    Conversation.conversation_id == conversation_id, Conversation.version == expected_version
                )
                .values(version=Conversation.version + 1)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            session.add(
                ConversationMessage(
                    message_id=_id(),
                    conversation_id=conversation_id,
                    version=expected_version + 1,
                    role="USER",
                    text=f"message {expected_version + 1}",
                )
            )
            return True

    assert await write(0)
    assert await write(1)
    assert not await write(1)  # another writer got version 2 first
    async with sessions() as session:
        conversation = await session.get(
            Conversation, conversation_id, options=[selectinload(Conversation.messages)]
        )
    assert conversation is not None
    assert conversation.version == 2
    assert [(m.version, m.text, m.hidden) for m in conversation.messages] == [
        (1, "message 1", False),
        (2, "message 2", False),
    ]


async def test_two_audit_writers_cannot_fork_the_chain(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        session.add(AuditRecord(sequence=1, action="SubmitTask", record_hash="1" * 64, detail={"k": "v"}))
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(AuditRecord(sequence=1, action="CancelTask", record_hash="2" * 64))
    async with sessions() as session:
        [record] = (await session.scalars(sa.select(AuditRecord))).all()
    assert (record.action, record.outcome, record.detail) == ("SubmitTask", "OK", {"k": "v"})
    assert record.record_time.tzinfo is not None


async def test_ping_is_true_only_for_a_reachable_database_at_head(database_url: str) -> None:
    engine = storage.create_async_engine(database_url)
    unreachable = storage.create_async_engine("postgresql://nobody@127.0.0.1:1/nothing")
    try:
        assert not await storage.ping(engine)  # reachable, but not migrated
        storage.upgrade(database_url)
        assert await storage.ping(engine)
        storage.downgrade(database_url, "base")
        assert not await storage.ping(engine)
        assert not await storage.ping(unreachable)
    finally:
        await engine.dispose()
        await unreachable.dispose()


async def test_concurrent_read_then_write_transactions_all_commit(sessions: Sessions) -> None:
    conversation_id = _id()
    async with sessions.begin() as session:
        session.add(Conversation(conversation_id=conversation_id))

    async def writer() -> int:
        retries = 0
        while True:
            async with sessions.begin() as session:
                seen = await session.scalar(
                    sa.select(Conversation.version).where(Conversation.conversation_id == conversation_id)
                )
                result = await session.execute(
                    sa.update(Conversation)
                    .where(Conversation.conversation_id == conversation_id, Conversation.version == seen)
                    .values(version=Conversation.version + 1)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return retries
            retries += 1

    await asyncio.gather(*(writer() for _ in range(8)))
    async with sessions() as session:
        version = await session.scalar(
            sa.select(Conversation.version).where(Conversation.conversation_id == conversation_id)
        )
    assert version == 8


async def test_read_only_work_can_opt_out_of_taking_the_sqlite_write_lock(engine: AsyncEngine) -> None:
    reader = engine.execution_options(sqlite_begin="DEFERRED")  # PostgreSQL ignores the option
    async with reader.connect() as connection:
        assert await connection.scalar(sa.select(sa.func.count()).select_from(Task)) == 0
    if engine.dialect.name == "sqlite":
        with pytest.raises(ValueError, match="sqlite_begin"):
            async with engine.execution_options(sqlite_begin="LATER").connect() as connection:
                await connection.scalar(sa.select(1))


async def test_a_missing_json_document_is_sql_null(sessions: Sessions) -> None:
    task_id = _id()
    async with sessions.begin() as session:
        session.add(Task(task_id=task_id, output=None))
    async with sessions() as session:
        found = await session.scalar(sa.select(Task.task_id).where(Task.output.is_(None)))
    assert found == task_id
