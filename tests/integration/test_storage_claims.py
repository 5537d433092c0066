"""Durable execution on PostgreSQL: planners claiming steps with FOR UPDATE SKIP LOCKED never share one."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from agentmesh import storage
from agentmesh.storage import Plan, PlanStep, Task

pytestmark = pytest.mark.postgres

STEPS = 200

# The claim a planner makes: ready steps, or running ones whose lease lapsed, skipping rows others hold.
_CLAIMABLE = sa.or_(
    PlanStep.state == "READY",
    sa.and_(PlanStep.state == "RUNNING", PlanStep.lease_expires_at < sa.func.now()),
)


@pytest.fixture
async def engine(migrated_postgres_url: str) -> AsyncIterator[AsyncEngine]:
    # SKIP LOCKED is PostgreSQL's; on SQLite one planner runs and writers take turns (BEGIN IMMEDIATE).
    engine = storage.create_async_engine(migrated_postgres_url, pool_size=8)
    task_id, plan_id = uuid.uuid4().hex, uuid.uuid4().hex
    async with storage.async_session_factory(engine).begin() as session:
        session.add(Task(task_id=task_id, goal="many steps"))
        session.add(
            Plan(
                plan_id=plan_id,
                task_id=task_id,
                strategy="PLAYBOOK",
                content_hash="0" * 64,
                plan={},
                steps=[
                    PlanStep(task_id=task_id, step_id=f"s{i}", position=i, state="READY")
                    for i in range(STEPS)
                ],
            )
        )
    yield engine
    await engine.dispose()


async def _claim(session: AsyncSession, owner: str, limit: int) -> list[int]:
    ids = (
        await session.scalars(
            sa.select(PlanStep.id)
            .where(_CLAIMABLE)
            .order_by(PlanStep.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if ids:
        await session.execute(
            sa.update(PlanStep)
            .where(PlanStep.id.in_(ids))
            .values(
                state="RUNNING",
                lease_owner=owner,
                lease_expires_at=storage.utcnow() + dt.timedelta(seconds=30),
                attempt_count=PlanStep.attempt_count + 1,
            )
        )
    return list(ids)


async def test_a_step_locked_by_one_planner_is_skipped_by_another(engine: AsyncEngine) -> None:
    sessions = storage.async_session_factory(engine)
    async with sessions.begin() as first, sessions.begin() as second:
        held = await _claim(first, "planner-a", 5)
        # The first transaction is still open: the second must skip its rows, not wait for them.
        taken = await asyncio.wait_for(_claim(second, "planner-b", 5), timeout=5)
    assert len(held) == len(taken) == 5
    assert not set(held) & set(taken)


async def test_concurrent_planners_claim_every_step_exactly_once(engine: AsyncEngine) -> None:
    sessions = storage.async_session_factory(engine)
    claimed: dict[str, list[int]] = {}

    async def planner(owner: str) -> None:
        mine = claimed.setdefault(owner, [])
        while True:
            async with sessions.begin() as session:
                ids = await _claim(session, owner, 3)
            if not ids:
                return
            mine.extend(ids)

    await asyncio.gather(*(planner(f"planner-{n}") for n in range(4)))

    every = [step for steps in claimed.values() for step in steps]
    assert len(every) == len(set(every)) == STEPS
    assert sum(1 for steps in claimed.values() if steps) > 1  # they really ran side by side
    async with sessions() as session:
        counts = (await session.execute(sa.select(PlanStep.attempt_count, PlanStep.lease_owner))).all()
    assert {attempts for attempts, _ in counts} == {1}
    assert {owner for _, owner in counts} == {owner for owner, steps in claimed.items() if steps}


async def test_a_step_whose_lease_lapsed_can_be_claimed_again(engine: AsyncEngine) -> None:
    sessions = storage.async_session_factory(engine)
    async with sessions.begin() as session:
        [step_id] = await _claim(session, "planner-dead", 1)
        await session.execute(
            sa.update(PlanStep)
            .where(PlanStep.id == step_id)
            .values(lease_expires_at=storage.utcnow() - dt.timedelta(seconds=1))
        )
    async with sessions.begin() as session:
        again = await _claim(session, "planner-alive", 1)
        step = await session.get(PlanStep, step_id)
    assert again == [step_id]
    assert step is not None
    assert (step.lease_owner, step.attempt_count) == ("planner-alive", 2)
