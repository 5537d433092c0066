"""The ends of attempts in two round trips on PostgreSQL (psycopg pipeline mode).

The common case of a batch of attempt ends (every step SUCCEEDED, or READY for a retry) is one transaction
sent in two pipelines: (1) lock the tasks, end the attempts and steps, read the plans' step states; (2) what
the plans' advance decides (claims of the unblocked steps, state changes, events, a finished task's end), the
audit chain lock and the audit records (linked and hashed by the database as it appends them, so the chain is
held only for the end of the transaction, not across the Python between the two), COMMIT. Statements inside a
pipeline are sent without waiting; PostgreSQL runs them in order, so each sees the ones before it, and locks are
taken in the same order as on the general path (tasks, then step rows, then the chain).

Anything else (a step failing for good, a plan waiting to be re-planned) rolls back and goes the general way
(:meth:`PlannerStore._finish`), which reads as it goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from agentmesh.audit._append import queue_chained
from agentmesh.storage import batched_pipeline, psycopg_connection, queue_begin, queue_commit, utcnow, write

if TYPE_CHECKING:
    from agentmesh.services.planner.store import AttemptFinish, PlannerStore, _Ahead

__all__ = ["CLAIM_UNBLOCKED", "StepRow", "finish_pipelined"]

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
CLAIM_UNBLOCKED = (
    "UPDATE plan_steps SET state = 'RUNNING', lease_owner = %(owner)s, lease_expires_at = %(lease)s, "
    "attempt_count = attempt_count + 1, started_at = coalesce(started_at, %(now)s), updated_at = %(now)s "
    "WHERE plan_id = %(plan_id)s AND step_id = ANY(%(ids)s) AND state = 'PENDING' "
    "RETURNING id, task_id, plan_id, step_id, attempt_count, max_attempts, idempotency_key, agent_instance_id, "
    "agent_endpoint"
)


class _Fallback(Exception):
    """The batch needs the general path."""


async def finish_pipelined(store: PlannerStore, finishes: Sequence[AttemptFinish], ahead: _Ahead) -> list[str] | None:
    """Record a batch of attempt ends in two round trips; None when the batch needs the general path (nothing
    was written then)."""
    from agentmesh.services.planner.store import _END_ATTEMPT, FINAL_TASK_STATES, _step_end

    now = utcnow()
    ends = [_step_end(f.claimed, f.end, now) for f in finishes]
    if any(values["state"] == "FAILED" for values in ends):
        return None  # the task ends or is re-planned: the general path
    task_ids = sorted({f.claimed.task_id for f in finishes})
    plans = {f.claimed.task_id: f.claimed.plan_id for f, values in zip(finishes, ends, strict=True)
             if values["state"] == "SUCCEEDED"}
    audit = [f.audit for f in finishes if f.audit is not None]
    async with store.single.connect() as conn:  # autocommit: BEGIN and COMMIT are queued with the statements
        driver = await psycopg_connection(conn)
        try:
            async with batched_pipeline(driver):
                await queue_begin(driver)
                locked = await driver.execute(_LOCK_TASKS, (task_ids,))
                await write(conn, _END_ATTEMPT, [
                    {"p_row_id": f.claimed.row_id, "p_attempt": f.claimed.attempt, "p_state": f.end.state,
                     "p_error_code": f.end.error_code, "p_error_message": f.end.error_message[:4000],
                     "p_finished_at": now, "p_model_usages": list(f.end.model_usages), "p_replayed": f.end.replayed}
                    for f in finishes
                ])
                ended = [
                    await driver.execute(_END_STEP[values["state"]], {
                        "row_id": f.claimed.row_id, "owner": store.owner, "attempt": f.claimed.attempt, "now": now,
                        "output": Jsonb(values.get("output")) if values.get("output") is not None else None,
                        "not_before": values.get("not_before"), "error_code": values.get("error_code", ""),
                        "error_message": values.get("error_message", ""),
                    })
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
                if events:
                    await store._events(conn, None, events)
                if audit:
                    await queue_chained(driver, audit)
                await queue_commit(driver)
        except _Fallback:
            await driver.execute("ROLLBACK")
            return None
        except BaseException:
            await conn.invalidate()
            raise
    for cursor in ahead.deferred:
        ahead.take([tuple(row) for row in await cursor.fetchall()])
    return ["ended" if result == "recorded" and f.claimed.task_id in done else result
            for f, result in zip(finishes, results, strict=True)]


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
        events += [("ATTEMPT", claimed.step_id, end.state, claimed.attempt, claimed.task_id),
                   ("STEP_STATE", claimed.step_id, values["state"], claimed.attempt, claimed.task_id)]
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
