"""Adversarial checks of the one-round-trip step end (``finish_speculative``) and the step-end writer connection.

A replica decides a plan's advance from its own cached picture of the plan, guarded by PostgreSQL; when the guard
refuses (division by zero) the end is recorded the long way. Whatever the picture, the end must be recorded once,
the task must move on, and the guard's own error must never reach the caller as if the agent's reply were bad.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh import storage
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
from agentmesh.storage import PlanStep, Task
from tests.fixtures.planner_store import finish_step, step_states, submit_plan, task_state

pytestmark = pytest.mark.postgres


def _plan(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"strategy": "PLAYBOOK", "playbook": "adversarial",
            "steps": [{"skill": "noop", "input": {}, "depends_on": [], **s} for s in steps]}


async def _take_over(store_engine: AsyncEngine, task_id: str, step_id: str) -> None:
    """Another replica takes a step over (its lease lapsed here): attempt 2 is theirs."""
    async with store_engine.begin() as conn:
        await conn.execute(sa.update(PlanStep).where(PlanStep.task_id == task_id, PlanStep.step_id == step_id)
                           .values(lease_owner="planner-b", attempt_count=2))


_APPROVAL = {"reason": "check", "timeout": 600}


async def test_a_lost_step_whose_stale_advance_would_ask_an_approval_is_lost_not_an_error(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    task_id, claimed = await submit_plan(mine, _plan({"id": "a"}, {"id": "b", "depends_on": ["a"], "approval": _APPROVAL}))
    await _take_over(store_engine, task_id, "a")
    assert await finish_step(mine, claimed["a"]) == "lost"
    assert await step_states(store_engine, task_id) == {"a": ("RUNNING", 2), "b": ("PENDING", 0)}
    assert await task_state(store_engine, task_id) == "RUNNING"


async def test_a_lost_step_whose_stale_advance_would_end_a_task_with_approvals_is_lost_not_an_error(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    plan = _plan({"id": "a"}, {"id": "b", "depends_on": ["a"], "approval": {**_APPROVAL, "when": "false"}})
    task_id, claimed = await submit_plan(mine, plan)
    await _take_over(store_engine, task_id, "a")
    assert await finish_step(mine, claimed["a"]) == "lost"
    assert await task_state(store_engine, task_id) == "RUNNING"


async def test_an_approval_asked_by_a_one_round_trip_end_waits_and_the_task_ends_after_it(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    task_id, claimed = await submit_plan(mine, _plan({"id": "a"}, {"id": "b", "depends_on": ["a"], "approval": _APPROVAL}))
    assert await finish_step(mine, claimed["a"]) == "recorded"
    assert await step_states(store_engine, task_id) == {"a": ("SUCCEEDED", 1), "b": ("WAITING_APPROVAL", 0)}
    assert await task_state(store_engine, task_id) == "WAITING_APPROVAL"
    await mine.decide(task_id, "b", approve=True, by="boss", comment="ok")
    (step,) = await mine.claim(10, 60.0)
    assert await finish_step(mine, step) == "ended"
    assert await task_state(store_engine, task_id) == "SUCCEEDED"


async def test_guards_that_fail_again_and_again_leave_the_writer_usable(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    # The writer connection is kept after a refused guard (ROLLBACK); psycopg prepares a statement after its
    # fifth use. Refusals in a row, then ends that succeed, must all go through on the same connection.
    mine = stores()
    for _ in range(8):
        task_id, claimed = await submit_plan(mine, _plan({"id": "a"}, {"id": "b", "depends_on": ["a"]}))
        await _take_over(store_engine, task_id, "a")
        assert await finish_step(mine, claimed["a"]) == "lost"
        task_id, claimed = await submit_plan(mine, _plan({"id": "a"}, {"id": "b", "depends_on": ["a"]}))
        claim = ClaimAhead(limit=10, lease_ttl=60.0)
        assert await finish_step(mine, claimed["a"], claim) == "recorded"
        assert await finish_step(mine, claim.steps[0]) == "ended"


_AWKWARD: dict[str, Any] = {"q": 'say "hi", {x}\\ NULL', "list": [None, 1.5, "NULL", {"a": []}], "empty": {}, "n": None}


async def test_a_one_round_trip_end_claims_a_mix_of_started_and_plain_steps_with_awkward_inputs_exactly(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    # CLAIM_UNBLOCKED carries per-step arrays (text[] and jsonb[] with NULLs for steps started the usual way).
    def prepare(request: StartRequest) -> Prestart | None:
        if request.step_id not in ("b", "d"):
            return None
        claimed = Claimed(0, request.task_id, request.plan_id, request.step_id, request.attempt, 0, "", "", "")
        agent = {"namespace": "ns", "name": "n,{}\"", "version": "1", "endpoint": "127.0.0.1:1",
                 "instance_id": f"i-{request.step_id}"}
        return Prestart(AttemptStart(claimed, agent, {**_AWKWARD, "step": request.step_id}, ""), None)

    mine = stores()
    plan = _plan({"id": "a"}, *({"id": s, "depends_on": ["a"]} for s in ("b", "c", "d", "e")))
    task_id, claimed = await submit_plan(mine, plan)
    claim = ClaimAhead(limit=10, lease_ttl=60.0, prepare=prepare)
    assert mine.known_steps(claimed["a"].plan_id) is not None  # the one-round-trip way is tried
    assert await finish_step(mine, claimed["a"], claim) == "recorded"
    assert sorted(step.step_id for step in claim.steps) == ["b", "c", "d", "e"]
    async with store_engine.connect() as conn:
        rows = {row.step_id: row for row in await conn.execute(
            sa.select(PlanStep.step_id, PlanStep.agent_name, PlanStep.agent_instance_id, PlanStep.input)
            .where(PlanStep.task_id == task_id)
        )}
    for step_id in ("b", "d"):
        assert (rows[step_id].agent_name, rows[step_id].agent_instance_id) == ('n,{}"', f"i-{step_id}")
        assert rows[step_id].input == {**_AWKWARD, "step": step_id}
    for step_id in ("c", "e"):
        assert (rows[step_id].agent_instance_id, rows[step_id].input) == ("", None)


async def test_events_of_a_one_round_trip_end_are_numbered_in_the_order_they_were_made(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    plan = _plan({"id": "a"}, *({"id": f"s{i:02d}", "depends_on": ["a"]} for i in range(12)))
    task_id, claimed = await submit_plan(mine, plan)
    assert mine.known_steps(claimed["a"].plan_id) is not None  # the one-round-trip way is tried
    _, before = await mine.watch_read(task_id, 0, 1000)
    claim = ClaimAhead(limit=5, lease_ttl=60.0)
    assert await finish_step(mine, claimed["a"], claim) == "recorded"
    _, events = await mine.watch_read(task_id, before[-1].id, 1000)
    made = [(e.type, e.step_id, e.state) for e in events]
    assert made[:2] == [("ATTEMPT", "a", "SUCCEEDED"), ("STEP_STATE", "a", "SUCCEEDED")]
    ready = [m for m in made if m[2] == "READY"]
    running = [m for m in made if m[2] == "RUNNING"]
    assert len(ready) == 12 and len(running) == 5
    assert made.index(ready[-1]) < made.index(running[0])  # as _advance made them: changes, then claims
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    _, again = await mine.watch_read(task_id, events[4].id, 1000)  # resumed from a cursor: each event once
    assert [e.id for e in again] == ids[5:]


async def test_a_step_end_after_the_writer_connection_was_killed_is_recorded_on_the_next_try(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    # PostgreSQL restarted or an idle connection killed: the writer's connection is dead, which only its next use
    # finds out. That end fails (the store_engine's _record retries it), the dead connection is dropped, the retry works.
    mine = stores()
    task_id, claimed = await submit_plan(mine, _plan({"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["a", "b"]}))
    assert await finish_step(mine, claimed["a"]) == "recorded"  # the writer's connection exists now
    async with store_engine.connect() as conn:
        killed = (await conn.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND datname = current_database() AND backend_type = 'client backend' AND state = 'idle'"
        ))).scalar_one()
    assert killed >= 1
    outcomes: list[str] = []
    for _ in range(2):
        try:
            outcomes.append(await finish_step(mine, claimed["b"], ClaimAhead(limit=10, lease_ttl=60.0)))
            break
        except Exception as exc:  # what _record sees, and retries
            outcomes.append(type(exc).__name__)
    assert outcomes[-1] == "recorded", outcomes
    assert await step_states(store_engine, task_id) == {"a": ("SUCCEEDED", 1), "b": ("SUCCEEDED", 1), "c": ("RUNNING", 1)}
    assert await task_state(store_engine, task_id) == "RUNNING"


def _prepare_all(request: StartRequest) -> Prestart | None:
    claimed = Claimed(0, request.task_id, request.plan_id, request.step_id, request.attempt, 0, "", "", "")
    agent = {"namespace": "ns", "name": "noop", "version": "1", "endpoint": "127.0.0.1:1", "instance_id": "i-1"}
    return Prestart(AttemptStart(claimed, agent, {"blob": "x" * 4000, "step": request.step_id}, ""), None)


async def test_a_refused_guard_in_a_long_pipeline_falls_back_and_the_plan_still_moves_on(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    # Past 8 kB libpq sends part of the pipeline early; the refusal must still come back as the guard's, never as
    # an error of a later statement (a DataError would turn the agent's good reply into a failed step).
    mine, other = stores(), stores()
    plan = _plan({"id": "a"}, {"id": "z"}, *({"id": f"s{i}", "depends_on": ["a"]} for i in range(6)))
    task_id, claimed = await submit_plan(mine, plan)
    assert await finish_step(other, claimed["z"]) == "recorded"  # mine's picture of the plan is stale now
    claim = ClaimAhead(limit=10, lease_ttl=60.0, prepare=_prepare_all)
    assert await finish_step(mine, claimed["a"], claim, output={"blob": "y" * 20000}) == "recorded"
    assert sorted(step.step_id for step in claim.steps) == [f"s{i}" for i in range(6)]
    steps = await step_states(store_engine, task_id)
    assert steps["a"] == ("SUCCEEDED", 1) and all(steps[f"s{i}"] == ("RUNNING", 1) for i in range(6))


async def test_a_lost_step_in_a_long_pipeline_is_lost_not_an_error(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    plan = _plan({"id": "a"}, *({"id": f"s{i}", "depends_on": ["a"], "approval": _APPROVAL if i % 2 else None}
                                for i in range(6)))
    for step in plan["steps"]:
        if step.get("approval") is None:
            step.pop("approval", None)
    task_id, claimed = await submit_plan(mine, plan)
    await _take_over(store_engine, task_id, "a")
    claim = ClaimAhead(limit=10, lease_ttl=60.0, prepare=_prepare_all)
    assert await finish_step(mine, claimed["a"], claim, output={"blob": "y" * 20000}) == "lost"
    assert claim.steps == []
    assert (await step_states(store_engine, task_id))["s0"] == ("PENDING", 0)


_JOIN = _plan({"id": "left"}, {"id": "right"}, {"id": "join", "depends_on": ["left", "right"]})


async def test_both_branches_ending_in_one_batch_claim_the_join_once(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine = stores()
    task_id, claimed = await submit_plan(mine, _JOIN)
    claim = ClaimAhead(limit=10, lease_ttl=60.0)
    ends = [AttemptFinish(claimed[s], AttemptEnd("SUCCEEDED", output={"s": s})) for s in ("left", "right")]
    assert await mine.finish_attempts(ends, claim) == ["recorded", "recorded"]
    assert [step.step_id for step in claim.steps] == ["join"]
    assert (await step_states(store_engine, task_id))["join"] == ("RUNNING", 1)
    assert await finish_step(mine, claim.steps[0]) == "ended"
    assert await task_state(store_engine, task_id) == "SUCCEEDED"


async def test_a_batch_of_two_tasks_one_of_them_moved_on_elsewhere_records_both(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine, other = stores(), stores()
    fresh_id, fresh = await submit_plan(mine, _JOIN)
    stale_id, stale = await submit_plan(mine, _JOIN)
    assert await finish_step(other, stale["right"]) == "recorded"  # mine's picture of this one is out of date
    claim = ClaimAhead(limit=10, lease_ttl=60.0)
    ends = [AttemptFinish(fresh["left"], AttemptEnd("SUCCEEDED", output={})),
            AttemptFinish(stale["left"], AttemptEnd("SUCCEEDED", output={}))]
    assert await mine.finish_attempts(ends, claim) == ["recorded", "recorded"]
    assert [(s.task_id, s.step_id) for s in claim.steps] == [(stale_id, "join")]
    assert await step_states(store_engine, fresh_id) == {"left": ("SUCCEEDED", 1), "right": ("RUNNING", 1), "join": ("PENDING", 0)}
    assert await step_states(store_engine, stale_id) == {"left": ("SUCCEEDED", 1), "right": ("SUCCEEDED", 1), "join": ("RUNNING", 1)}


async def test_a_when_condition_on_a_big_number_decides_the_same_whichever_way_the_end_is_recorded(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine, other = stores(), stores()
    plan = _plan({"id": "a"}, {"id": "z"}, {"id": "b", "depends_on": ["a"], "when": "steps.a.output.n > 5.0"})
    one_id, one = await submit_plan(mine, plan)
    assert await finish_step(mine, one["a"], output={"n": 1e16}) == "recorded"  # one round trip
    two_id, two = await submit_plan(mine, plan)
    assert await finish_step(other, two["z"]) == "recorded"  # mine's picture is stale: two round trips
    assert await finish_step(mine, two["a"], output={"n": 1e16}) in ("recorded", "ended")
    assert (await step_states(store_engine, one_id))["b"][0] == (await step_states(store_engine, two_id))["b"][0]


async def test_a_watcher_resuming_from_its_cursor_sees_a_claim_that_committed_after_a_later_step_end(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    mine, claimer = stores(), stores()
    task_id, claimed = await submit_plan(mine, _plan({"id": "a"}, {"id": "b"}), ClaimAhead(limit=1, lease_ttl=60.0))
    assert list(claimed) == ["a"]  # b is READY, for the claim loop
    _, seen = await mine.watch_read(task_id, 0, 1000)
    cursor = seen[-1].id

    inserted, gate = asyncio.Event(), asyncio.Event()
    original = claimer._events

    async def slow_events(conn: Any, task: Any, events: Any) -> None:  # the claim's transaction stays open here
        await original(conn, task, events)
        inserted.set()
        await gate.wait()

    monkeypatch.setattr(claimer, "_events", slow_events)
    claiming = asyncio.create_task(claimer.claim(10, 60.0))
    await asyncio.wait_for(inserted.wait(), 30)
    # The claim holds the task's lock, as a transition does: the step end waits for it to commit, so its events
    # cannot take later ids and become visible first.
    ending = asyncio.create_task(finish_step(mine, claimed["a"]))
    finished, _ = await asyncio.wait({ending}, timeout=1.0)  # a bounded check that it does NOT end meanwhile
    _, first = await mine.watch_read(task_id, cursor, 1000)
    seen += first
    cursor = max([cursor, *(e.id for e in first)])
    assert not finished and first == []
    gate.set()
    assert [step.step_id for step in await claiming] == ["b"]
    assert await asyncio.wait_for(ending, 30) == "recorded"
    _, second = await mine.watch_read(task_id, cursor, 1000)
    seen += second
    assert ("STEP_STATE", "b", "RUNNING") in [(e.type, e.step_id, e.state) for e in seen]
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids))  # each event once, in order


async def test_a_step_ending_after_the_sweep_timed_its_task_out_is_lost_and_the_task_stays_failed(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine, sweeper = stores(), stores()
    task_id, claimed = await submit_plan(mine, _JOIN)
    assert await finish_step(mine, claimed["left"]) == "recorded"  # mine's picture: right running, join pending
    async with store_engine.begin() as conn:
        await conn.execute(sa.update(Task).where(Task.task_id == task_id)
                           .values(deadline_at=storage.utcnow() - dt.timedelta(seconds=1)))
    assert await sweeper.sweep() == 1
    claim = ClaimAhead(limit=10, lease_ttl=60.0)
    assert await finish_step(mine, claimed["right"], claim) == "lost"
    assert claim.steps == []
    assert await task_state(store_engine, task_id) == "FAILED"
    assert (await step_states(store_engine, task_id))["join"][0] == "SKIPPED"


async def test_a_step_ending_after_its_task_was_cancelled_is_lost(
    store_engine: AsyncEngine, stores: Callable[[], PlannerStore]
) -> None:
    mine, other = stores(), stores()
    task_id, claimed = await submit_plan(mine, _JOIN)
    assert await finish_step(mine, claimed["left"]) == "recorded"
    await other.cancel(task_id, "operator", by="ops")
    assert await finish_step(mine, claimed["right"]) == "lost"
    assert await task_state(store_engine, task_id) == "CANCELLED"
