"""The ends of attempts in one or two round trips on PostgreSQL (psycopg pipeline mode).

One round trip (:func:`finish_speculative`): when every attempt of the batch succeeded and this replica knows
the state of each plan it touches (its own last transition of that plan, kept in the store), the plan's advance
is decided in Python before anything is sent, and the whole transaction goes out in one pipeline with guards the
database checks first: each task still running, each step still leased to this attempt, and each plan's step
states and attempt counts exactly as expected. A guard that fails divides by zero, the server skips the rest,
COMMIT included, and the batch is rolled back and goes the two-round-trip way. Outputs of succeeded steps never
change within a plan, so states and attempt counts are all the advance depends on that another transaction can
change.

Two round trips (:func:`finish_pipelined`): the common case of a batch of attempt ends (every step SUCCEEDED, or
READY for a retry) is one transaction sent in two pipelines: (1) lock the tasks, end the attempts and steps, read
the plans' step states; (2) what the plans' advance decides (claims of the unblocked steps, state changes, events, a
finished task's end), the audit chain lock and the audit records (linked and hashed by the database as it appends
them, so the chain is held only for the end of the transaction, not across the Python between the two), COMMIT.
Statements inside a pipeline are sent without waiting; PostgreSQL runs them in order, so each sees the ones before
it, and locks are taken in the same order as on the general path (tasks, then step rows, then the chain).

Anything else (a step failing for good, a plan waiting to be re-planned) rolls back and goes the general way
(:meth:`PlannerStore._finish`), which reads as it goes.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from agentmesh.audit._append import queue_chained
from agentmesh.storage import batched_pipeline, psycopg_connection, queue_begin, queue_commit, utcnow

if TYPE_CHECKING:
    from agentmesh.services.planner.store import AttemptFinish, PlannerStore, _Ahead

__all__ = ["CLAIM_UNBLOCKED", "StepRow", "finish_pipelined", "finish_speculative"]

_LOCK_TASKS = "SELECT task_id, state FROM tasks WHERE task_id = ANY(%s) ORDER BY task_id FOR NO KEY UPDATE"
_RELEASE = "lease_owner = NULL, lease_expires_at = NULL, updated_at = %(now)s"
_MINE = "WHERE id = %(row_id)s AND lease_owner = %(owner)s AND attempt_count = %(attempt)s AND state = 'RUNNING' RETURNING id"
_END_STEP = {
    "SUCCEEDED": f"UPDATE plan_steps SET state = 'SUCCEEDED', output = %(output)s, finished_at = %(now)s, {_RELEASE} {_MINE}",
    "READY": (
        f"UPDATE plan_steps SET state = 'READY', not_before = %(not_before)s, error_code = %(error_code)s, "
        f"error_message = %(error_message)s, {_RELEASE} {_MINE}"
    ),
}
_PLAN_STEPS = "SELECT step_id, state, output, attempt_count FROM plan_steps WHERE plan_id = %s"
# Guards of the one-round-trip end: each divides by zero (SQLSTATE 22012) when the database disagrees.
# The tasks locked (as ``_LOCK_TASKS``), every one of them still running:
_LOCK_RUNNING = f"SELECT 1 / (count(*) = %s AND bool_and(state <> ALL(%s)))::int FROM ({_LOCK_TASKS}) AS locked"
# The attempt and its step ended, the step only while this attempt holds its lease:
_END_SUCCEEDED = (
    f"WITH ended AS ({_END_STEP['SUCCEEDED']}), attempt AS (UPDATE step_attempts SET state = 'SUCCEEDED', "
    "error_code = '', error_message = '', finished_at = %(now)s, model_usages = %(usages)s, replayed = %(replayed)s "
    "WHERE plan_step_id = %(row_id)s AND attempt = %(attempt)s) SELECT 1 / count(*) FROM ended"
)
_EXPECT_STEPS = (
    "SELECT 1 / coalesce((string_agg(step_id || ' ' || state || ' ' || attempt_count, ',' ORDER BY step_id COLLATE \"C\")"
    " = %s)::int, 0) FROM plan_steps WHERE plan_id = %s"
)
# Claims the unblocked steps and, for those whose first attempt starts with the claim, records the agent chosen
# and the resolved input in the same UPDATE (a NULL keeps the column: steps started the usual way).
CLAIM_UNBLOCKED = (
    "UPDATE plan_steps AS s SET state = 'RUNNING', lease_owner = %(owner)s, lease_expires_at = %(lease)s, "
    "attempt_count = s.attempt_count + 1, started_at = coalesce(s.started_at, %(now)s), updated_at = %(now)s, "
    "agent_namespace = coalesce(a.namespace, s.agent_namespace), agent_name = coalesce(a.name, s.agent_name), "
    "agent_version = coalesce(a.version, s.agent_version), agent_endpoint = coalesce(a.endpoint, s.agent_endpoint), "
    "agent_instance_id = coalesce(a.instance_id, s.agent_instance_id), input = coalesce(a.input, s.input) "
    "FROM unnest(%(ids)s::text[], %(namespaces)s::text[], %(names)s::text[], %(versions)s::text[], "
    "%(endpoints)s::text[], %(instances)s::text[], %(inputs)s::jsonb[]) "
    "AS a(step_id, namespace, name, version, endpoint, instance_id, input) "
    "WHERE s.plan_id = %(plan_id)s AND s.step_id = a.step_id AND s.state = 'PENDING' "
    "RETURNING s.id, s.task_id, s.plan_id, s.step_id, s.attempt_count, s.max_attempts, s.idempotency_key, "
    "s.agent_instance_id, s.agent_endpoint"
)


class _Fallback(Exception):
    """The batch needs the general path."""


async def finish_speculative(store: PlannerStore, finishes: Sequence[AttemptFinish], ahead: _Ahead) -> list[str] | None:
    """Record a batch of successful attempt ends in one round trip, the plans' advance decided from what this
    replica knows of them; None when it knows too little or the database disagrees (nothing was written then)."""
    from psycopg.errors import DivisionByZero

    from agentmesh.services.planner.store import FINAL_TASK_STATES, _step_end

    now = utcnow()
    ends = [_step_end(f.claimed, f.end, now) for f in finishes]
    expected = _expected_plans(store, finishes, ends)
    if expected is None:
        return None
    events: list[tuple[Any, ...]] = []
    done: set[str] = set()
    async with store.writer() as conn:  # autocommit: BEGIN and COMMIT are queued with the statements
        driver = await psycopg_connection(conn)
        try:
            async with batched_pipeline(driver):
                await queue_begin(driver)
                await driver.execute(_LOCK_RUNNING, (len(expected), list(FINAL_TASK_STATES), sorted(expected)))
                for finish, values in zip(finishes, ends, strict=True):
                    await driver.execute(_END_SUCCEEDED, {
                        **_step_params(store, finish, values, now),
                        "usages": Jsonb(list(finish.end.model_usages)), "replayed": finish.end.replayed,
                    })
                    events += _end_events(finish, values)
                for plan_id, rows in expected.values():
                    await driver.execute(_EXPECT_STEPS, (fingerprint(rows), plan_id))
                for task_id, (plan_id, rows) in sorted(expected.items()):
                    if await store._advance(conn, task_id, plan_id, store._tasks[task_id].input, ahead=ahead,
                                            sink=events, rows=rows):
                        done.add(task_id)
                await _queue_rest(store, conn, driver, events, finishes)
        except DivisionByZero:  # a guard: another transaction moved a plan on, or a lease or the task was lost
            # psycopg's own rollback: statements it meant to prepare in the aborted pipeline never were, and it
            # forgets them (DEALLOCATE ALL); a plain ROLLBACK would leave it naming them on this connection.
            await driver.rollback()
            store.forget_steps(plan_id for plan_id, _ in expected.values())
            for task_id in done:
                store._endings.pop(task_id, None)
            return None
        except BaseException:
            await conn.invalidate()
            raise
    await ahead.take_deferred()
    return ["ended" if f.claimed.task_id in done else "recorded" for f in finishes]


def _expected_plans(
    store: PlannerStore, finishes: Sequence[AttemptFinish], ends: list[dict[str, Any]]
) -> dict[str, tuple[str, list[StepRow]]] | None:
    """Each task's plan as it will be once these attempts have ended (by task: plan id, step rows), from what
    this replica knows; None unless every attempt succeeded and each plan, task and document is known here."""
    expected: dict[str, tuple[str, list[StepRow]]] = {}
    for finish, values in zip(finishes, ends, strict=True):
        claimed = finish.claimed
        if values["state"] != "SUCCEEDED" or claimed.task_id not in store._tasks or store.cached_plan(claimed.plan_id) is None:
            return None
        if claimed.task_id not in expected:
            known = store.known_steps(claimed.plan_id)
            if known is None or any(row.state == "FAILED" for row in known):
                return None  # unknown here, or waiting to be re-planned (the general path's business)
            expected[claimed.task_id] = (claimed.plan_id, [StepRow(*row.values()) for row in known])
        plan_id, rows = expected[claimed.task_id]
        if plan_id != claimed.plan_id:
            return None
        row = next((r for r in rows if r.step_id == claimed.step_id), None)
        if row is None or row.state != "RUNNING" or row.attempt_count != claimed.attempt:
            return None  # what is known here is already out of date
        row.state, row.output = "SUCCEEDED", as_stored(values["output"])
    return expected


def as_stored(value: Any) -> Any:
    """A JSON value as jsonb gives it back, so a decision made from it is the one made from a read: a float of
    1e16 or more is written with an exponent ("1e+16") and comes back as the integer that text names."""
    if isinstance(value, float):
        text = repr(value)
        return int(decimal.Decimal(text)) if "e+" in text else value
    if isinstance(value, dict):
        return {key: as_stored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_stored(item) for item in value]
    return value


def fingerprint(rows: Sequence[StepRow]) -> str:
    """A plan's step states and attempt counts as the guard reads them from the database (ordered by step id)."""
    return ",".join(f"{r.step_id} {r.state} {r.attempt_count}" for r in sorted(rows, key=lambda r: r.step_id))


async def finish_pipelined(store: PlannerStore, finishes: Sequence[AttemptFinish], ahead: _Ahead) -> list[str] | None:
    """Record a batch of attempt ends in two round trips; None when the batch needs the general path (nothing
    was written then)."""
    from agentmesh.services.planner.store import FINAL_TASK_STATES, _step_end

    now = utcnow()
    ends = [_step_end(f.claimed, f.end, now) for f in finishes]
    if any(values["state"] == "FAILED" for values in ends):
        return None  # the task ends or is re-planned: the general path
    task_ids = sorted({f.claimed.task_id for f in finishes})
    plans = {f.claimed.task_id: f.claimed.plan_id for f, values in zip(finishes, ends, strict=True)
             if values["state"] == "SUCCEEDED"}
    async with store.writer() as conn:  # autocommit: BEGIN and COMMIT are queued with the statements
        driver = await psycopg_connection(conn)
        try:
            async with batched_pipeline(driver):
                await queue_begin(driver)
                locked = await driver.execute(_LOCK_TASKS, (task_ids,))
                await store._end_attempts(conn, finishes, now)
                ended = [
                    await driver.execute(_END_STEP[values["state"]], _step_params(store, f, values, now))
                    for f, values in zip(finishes, ends, strict=True)
                ]
                steps = {task_id: await driver.execute(_PLAN_STEPS, (plan_id,)) for task_id, plan_id in plans.items()}
            states = {row[0]: row[1] for row in await locked.fetchall()}
            results, events, advance = await _outcomes(finishes, ends, ended, states, ahead, final=FINAL_TASK_STATES)
            rows = {task_id: [StepRow(*row) for row in await steps[task_id].fetchall()] for task_id in advance}
            if any(row.state == "FAILED" for task_rows in rows.values() for row in task_rows):
                raise _Fallback()  # a plan waiting to be re-planned
            if any(task_id not in store._tasks for task_id in advance):
                raise _Fallback()  # the task's fixed fields are not cached here: the general path reads them
            done: set[str] = set()
            async with batched_pipeline(driver):
                for task_id in advance:
                    if await store._advance(conn, task_id, plans[task_id], store._tasks[task_id].input, ahead=ahead,
                                            sink=events, rows=rows[task_id]):
                        done.add(task_id)
                await _queue_rest(store, conn, driver, events, finishes)
        except _Fallback:
            await driver.execute("ROLLBACK")
            return None
        except BaseException:
            await conn.invalidate()
            raise
    await ahead.take_deferred()
    return ["ended" if result == "recorded" and f.claimed.task_id in done else result
            for f, result in zip(finishes, results, strict=True)]


def _step_params(store: PlannerStore, finish: AttemptFinish, values: dict[str, Any], now: Any) -> dict[str, Any]:
    """The parameters of a step's end (``_END_STEP``): only while this replica still holds its lease."""
    return {
        "row_id": finish.claimed.row_id, "owner": store.owner, "attempt": finish.claimed.attempt, "now": now,
        "output": Jsonb(values.get("output")) if values.get("output") is not None else None,
        "not_before": values.get("not_before"), "error_code": values.get("error_code", ""),
        "error_message": values.get("error_message", ""),
    }


def _end_events(finish: AttemptFinish, values: dict[str, Any]) -> list[tuple[Any, ...]]:
    claimed = finish.claimed
    return [("ATTEMPT", claimed.step_id, finish.end.state, claimed.attempt, claimed.task_id),
            ("STEP_STATE", claimed.step_id, values["state"], claimed.attempt, claimed.task_id)]


async def _queue_rest(store: PlannerStore, conn: Any, driver: Any, events: list[tuple[Any, ...]],
                      finishes: Sequence[AttemptFinish]) -> None:
    """Queue a transition's events, its audit records (the chain lock: last, held only to the end) and COMMIT."""
    if events:
        await store._events(conn, None, events)
    audit = [f.audit for f in finishes if f.audit is not None]
    if audit:
        await queue_chained(driver, audit)
    await queue_commit(driver)


async def _outcomes(
    finishes: Sequence[AttemptFinish],
    ends: list[dict[str, Any]],
    ended: list[Any],
    states: dict[str, str],
    ahead: _Ahead,
    *,
    final: frozenset[str],
) -> tuple[list[str], list[tuple[Any, ...]], list[str]]:
    """After the first round trip: each attempt's result, the events so far, and the tasks whose plans advance."""
    results = ["recorded"] * len(finishes)
    events: list[tuple[Any, ...]] = []
    advance: set[str] = set()
    for index, (finish, values) in enumerate(zip(finishes, ends, strict=True)):
        claimed, end = finish.claimed, finish.end
        if states.get(claimed.task_id) in final:
            events.append(("ATTEMPT", claimed.step_id, end.state, claimed.attempt, claimed.task_id))
            results[index] = "lost"
            continue
        if await ended[index].fetchone() is None:
            results[index] = "lost"
            continue
        events += _end_events(finish, values)
        if values["state"] == "SUCCEEDED":
            advance.add(claimed.task_id)
        else:
            ahead.ready_left = True
    return results, events, sorted(advance)


class StepRow:
    """A plan step as read by the pipeline (what :meth:`PlannerStore._advance` looks at)."""

    __slots__ = ("attempt_count", "output", "state", "step_id")

    def __init__(self, step_id: str, state: str, output: Any, attempt_count: int) -> None:
        self.step_id, self.state, self.output, self.attempt_count = step_id, state, output, attempt_count

    def values(self) -> tuple[str, str, Any, int]:
        return self.step_id, self.state, self.output, self.attempt_count
