"""A step's end decided from what the replica knows of its plan, checked by PostgreSQL before it commits.

The planner records a successful step end, and whatever it unblocks, in one round trip when it knows the plan's
state from its own last transition of it. Another writer may have moved the plan on meanwhile: the database then
refuses the expectation and the end is recorded the long way, reading the plan. Either way the join step must
run exactly once and the task must end: a wrong guess must never leave work pending or claim a step twice.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.services.planner.store import (
    AttemptEnd,
    AttemptFinish,
    AttemptStart,
    ClaimAhead,
    Claimed,
    PlannerStore,
    Prestart,
    StartRequest,
)
from agentmesh.storage import PlanStep, StepAttempt, Task
from tests.fixtures.planner_store import finish_step, step_states, submit_plan, task_state

pytestmark = pytest.mark.postgres

_PLAN = {
    "strategy": "PLAYBOOK",
    "playbook": "join",
    "steps": [
        {"id": "left", "skill": "noop", "input": {}, "depends_on": []},
        {"id": "right", "skill": "noop", "input": {}, "depends_on": []},
        {"id": "join", "skill": "noop", "input": {}, "depends_on": ["left", "right"]},
    ],
}


async def test_a_join_runs_once_when_each_branch_ends_in_turn(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    store = stores()
    task_id, claimed = await submit_plan(store, _PLAN)
    assert set(claimed) == {"left", "right"}

    assert await finish_step(store, claimed["left"]) == "recorded"
    assert (await step_states(store_engine, task_id))["join"] == ("PENDING", 0)
    claim = ClaimAhead(limit=10, lease_ttl=60.0)
    assert await finish_step(store, claimed["right"], claim) == "recorded"
    assert [step.step_id for step in claim.steps] == ["join"]
    assert (await step_states(store_engine, task_id))["join"] == ("RUNNING", 1)

    assert await finish_step(store, claim.steps[0]) == "ended"
    assert await task_state(store_engine, task_id) == "SUCCEEDED"
    async with store_engine.connect() as conn:
        attempts = (await conn.execute(sa.select(sa.func.count()).select_from(StepAttempt)
                                       .where(StepAttempt.task_id == task_id))).scalar_one()
    assert attempts == 0  # no attempt rows were started in this test: ends of them touch nothing else


async def test_a_branch_ended_by_another_writer_is_seen_and_the_join_still_runs(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    task_id, claimed = await submit_plan(mine, _PLAN)
    # Another writer ends the right branch: this replica's picture of the plan still has it running. Deciding
    # from that picture alone would leave the join pending forever once the left branch ends.
    other = stores()
    assert await finish_step(other, claimed["right"]) == "recorded"
    assert mine.known_steps(claimed["left"].plan_id) is not None  # the stale picture is there to be tried

    claim = ClaimAhead(limit=10, lease_ttl=60.0)
    assert await finish_step(mine, claimed["left"], claim) == "recorded"
    assert [step.step_id for step in claim.steps] == ["join"]
    assert await step_states(store_engine, task_id) == {"left": ("SUCCEEDED", 1), "right": ("SUCCEEDED", 1), "join": ("RUNNING", 1)}

    assert await finish_step(mine, claim.steps[0]) == "ended"
    assert await task_state(store_engine, task_id) == "SUCCEEDED"


async def test_a_step_whose_lease_was_taken_over_is_not_ended_by_its_old_holder(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    task_id, claimed = await submit_plan(mine, _PLAN)
    # Another replica took the left branch over (its lease lapsed here): attempt 2 is theirs now.
    async with store_engine.begin() as conn:
        await conn.execute(
            sa.update(PlanStep)
            .where(PlanStep.task_id == task_id, PlanStep.step_id == "left")
            .values(lease_owner="planner-b", attempt_count=2)
        )
    assert await finish_step(mine, claimed["left"]) == "lost"
    assert (await step_states(store_engine, task_id))["left"] == ("RUNNING", 2)
    assert await task_state(store_engine, task_id) == "RUNNING"


async def test_a_step_of_a_task_cancelled_meanwhile_ends_without_moving_its_plan(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    task_id, claimed = await submit_plan(mine, _PLAN)
    assert await finish_step(mine, claimed["left"]) == "recorded"
    # Cancelled by another replica: this one's picture of the plan says running, the database says otherwise.
    async with store_engine.begin() as conn:
        await conn.execute(sa.update(Task).where(Task.task_id == task_id).values(state="CANCELLED"))
    claim = ClaimAhead(limit=10, lease_ttl=60.0)
    assert await finish_step(mine, claimed["right"], claim) == "lost"
    assert claim.steps == []
    assert (await step_states(store_engine, task_id))["join"] == ("PENDING", 0)


async def test_a_step_started_with_its_claim_names_its_instance_before_any_call(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    # The claiming transaction records the chosen instance and the resolved input with the claim: a retry after a
    # crash reads them back and goes to the same instance (its idempotency cache), so no skill runs twice.
    def prepare(request: StartRequest) -> Prestart | None:
        if request.step_id != "left":
            return None  # started the usual way, after the claim
        claimed = Claimed(0, request.task_id, request.plan_id, request.step_id, request.attempt, 0, "", "", "")
        agent = {"namespace": "ns", "name": "noop", "version": "1.0.0", "endpoint": "127.0.0.1:1", "instance_id": "i-7"}
        return Prestart(AttemptStart(claimed, agent, {"n": 1}, ""), None)

    task_id, claimed = await submit_plan(stores(), _PLAN, ClaimAhead(limit=10, lease_ttl=60.0, prepare=prepare))
    assert claimed["left"].previous_instance_id == "i-7"
    async with store_engine.connect() as conn:
        rows = {row.step_id: row for row in await conn.execute(
            sa.select(PlanStep.step_id, PlanStep.agent_instance_id, PlanStep.agent_endpoint, PlanStep.input)
            .where(PlanStep.task_id == task_id)
        )}
        attempts = (await conn.execute(
            sa.select(StepAttempt.step_id, StepAttempt.agent_instance_id).where(StepAttempt.task_id == task_id)
        )).all()
    assert (rows["left"].agent_instance_id, rows["left"].agent_endpoint, rows["left"].input) == ("i-7", "127.0.0.1:1", {"n": 1})
    assert (rows["right"].agent_instance_id, rows["right"].input) == ("", None)  # not started yet
    assert [tuple(a) for a in attempts] == [("left", "i-7")]


async def test_what_the_replica_keeps_of_an_output_is_what_the_database_gives_back(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    # The next decision (a `when`, a template) is made from the kept output on the one-round-trip path and from
    # the stored one on the other: they must be the same values, big and small numbers included.
    store = stores()
    task_id, claimed = await submit_plan(store, _PLAN)
    output = {"n": [1e16, 1e300, 1.5e20, -2e17, 3.0, 1e-07, 0.1, 12345678901234567.0], "s": "x", "b": True, "z": None}
    (result,) = await store.finish_attempts([AttemptFinish(claimed["left"], AttemptEnd("SUCCEEDED", output=output))])
    assert result == "recorded"
    known = store.known_steps(claimed["left"].plan_id)
    assert known is not None
    kept = next(row.output for row in known if row.step_id == "left")
    async with store_engine.connect() as conn:
        stored = (await conn.execute(
            sa.select(PlanStep.output).where(PlanStep.task_id == task_id, PlanStep.step_id == "left"))).scalar_one()
    assert kept == stored and [type(v) for v in kept["n"]] == [type(v) for v in stored["n"]]
