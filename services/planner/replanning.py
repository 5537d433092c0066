"""Re-planning: when a step fails for good and the plan names an alternative for it, the task goes on under a
new plan version instead of failing.

A plan step may list ``alternatives`` (another agent, skill or input that does the same job; a playbook says
so, and capability-matched and model-made plans list the other discovered agents offering the skill). When
the step fails permanently (its agent gone, revoked or undiscoverable, its retries exhausted, its output
refused), the planner makes plan version N+1, linked to version N with the reason: the failed step takes its
first alternative (the rest stay for a later re-plan), every other step is the same. Nothing runs twice:

- steps that finished keep their outputs; they are carried into the new version as they ended, never re-run;
- the re-plan waits until no other step of the plan is running or ready (their outputs are carried too), so
  a call in flight is never abandoned or repeated; meanwhile nothing downstream of the failed step starts;
- the replaced step gets a new idempotency key (its alternative is another call); its attempt numbers go on
  from the failed ones, so the execution log reads as one sequence.

The old version's unfinished steps end CANCELLED ("replaced by plan version N+1"); plans are never changed.
Everything happens in the transaction that recorded the failure (or the last sibling's end), under the task's
row lock, so two replicas never both re-plan one task.
"""

from __future__ import annotations

import copy
import uuid
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.services.planner.plans import PlanDocument, content_hash
from agentmesh.storage import Plan, PlanStep, Task, utcnow

if TYPE_CHECKING:
    from agentmesh.services.planner.store import PlannerStore

__all__ = ["MAX_PLAN_VERSIONS", "after_failure", "resume", "with_alternatives"]

PLANS = Plan.__table__
STEPS = PlanStep.__table__
TASKS = Task.__table__

# A bound on re-planning, beside the alternatives themselves running out.
MAX_PLAN_VERSIONS = 8
# Steps of the plan that may still produce an output: the re-plan waits for them.
_BUSY = frozenset({"RUNNING", "READY"})
# Old-version states carried into the new version as they are (the approval row is per task and step).
_CARRIED = frozenset({"SUCCEEDED", "SKIPPED", "WAITING_APPROVAL"})
_ROW_FIELDS = (
    "attempt_count", "max_attempts", "idempotency_key", "agent_namespace", "agent_name", "agent_version",
    "agent_endpoint", "agent_instance_id", "input", "output", "error_code", "error_message", "started_at",
    "finished_at",
)

# A step row that never ran (every row of one INSERT has the same columns).
_FRESH: dict[str, Any] = {
    name: 0 if name == "attempt_count" else None if name in ("input", "output", "started_at", "finished_at") else ""
    for name in _ROW_FIELDS
    if name not in ("max_attempts", "idempotency_key")
}


def with_alternatives(doc: dict[str, Any], step_ids: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """The plan document with each of ``step_ids`` replaced by its first alternative, and the alternatives used;
    None when one of them has none left. An alternative overrides the step's fields (``agent`` as a whole)."""
    new = copy.deepcopy(doc)
    used: dict[str, dict[str, Any]] = {}
    for position, step in enumerate(new["steps"]):
        if step["id"] not in step_ids:
            continue
        alternatives = step.get("alternatives") or []
        if not alternatives:
            return None
        first, rest = alternatives[0], alternatives[1:]
        replaced = {key: value for key, value in step.items() if key != "alternatives"}
        replaced.update(copy.deepcopy(first))
        if rest:
            replaced["alternatives"] = rest
        new["steps"][position] = replaced
        used[step["id"]] = first
    return (new, used) if len(used) == len(set(step_ids)) else None


async def after_failure(
    store: PlannerStore, conn: AsyncConnection, task_id: str, plan_id: str, step_id: str, task_input: dict[str, Any],
    ahead: Any,
) -> bool:
    """A step of ``plan_id`` just failed for good (recorded in ``conn``, the task row locked). True when the task
    goes on: re-planned now, or once the plan's running steps have ended; False when the task must fail."""
    document = await store.plan(plan_id)
    if not document.steps[step_id].alternatives:
        return False  # the common case: no alternative, no read
    rows = await _rows(conn, plan_id)
    if not await _replannable(conn, task_id, plan_id, document, rows):
        return False
    if any(row.state in _BUSY for row in rows):
        return True  # siblings still running: the last to end re-plans (see resume)
    await _replan(store, conn, task_id, plan_id, document, rows, task_input, ahead)
    return True


async def resume(
    store: PlannerStore, conn: AsyncConnection, task_id: str, plan_id: str, task_input: dict[str, Any], ahead: Any,
) -> bool:
    """A step of a plan waiting to be re-planned ended: re-plan once nothing else runs. Returns True when the
    task ended (the new plan finished at once, or the re-plan became impossible and the task failed)."""
    document = await store.plan(plan_id)
    rows = await _rows(conn, plan_id)
    if any(row.state in _BUSY for row in rows):
        return False
    if not await _replannable(conn, task_id, plan_id, document, rows):
        failed = [row for row in rows if row.state == "FAILED"]
        error = "; ".join(f"step {r.step_id} failed: {r.error_code} {r.error_message}".strip() for r in failed)
        await store._end_task(conn, task_id, "FAILED", error=error)
        return True
    return await _replan(store, conn, task_id, plan_id, document, rows, task_input, ahead)


async def _rows(conn: AsyncConnection, plan_id: str) -> list[Any]:
    query = sa.select(STEPS).where(STEPS.c.plan_id == plan_id).order_by(STEPS.c.position)
    return list((await conn.execute(query)).all())


async def _replannable(
    conn: AsyncConnection, task_id: str, plan_id: str, document: PlanDocument, rows: list[Any]
) -> bool:
    """Every failed step has an alternative left, the task's deadline has not passed, versions are not used up."""
    if not all(document.steps[row.step_id].alternatives for row in rows if row.state == "FAILED"):
        return False
    deadline = (await conn.execute(sa.select(TASKS.c.deadline_at).where(TASKS.c.task_id == task_id))).scalar_one()
    if deadline is not None and deadline <= utcnow():
        return False
    version = (await conn.execute(sa.select(PLANS.c.version).where(PLANS.c.plan_id == plan_id))).scalar_one()
    return int(version) < MAX_PLAN_VERSIONS


async def _replan(
    store: PlannerStore,
    conn: AsyncConnection,
    task_id: str,
    plan_id: str,
    document: PlanDocument,
    rows: list[Any],
    task_input: dict[str, Any],
    ahead: Any,
) -> bool:
    """Store plan version N+1 and its steps, end version N's leftovers, and run the new version on."""
    failed = [row for row in rows if row.state == "FAILED"]
    made = with_alternatives(document.doc, [row.step_id for row in failed])
    assert made is not None  # checked by _replannable
    doc, used = made
    old = (await conn.execute(sa.select(PLANS.c.version).where(PLANS.c.plan_id == plan_id))).scalar_one()
    version = int(old) + 1
    reason = "; ".join(_why(row, used[row.step_id]) for row in failed) + f" (re-planned from version {old})"
    new_plan_id = f"plan-{uuid.uuid4().hex}"
    now = utcnow()
    parsed = PlanDocument.parse(doc)
    await conn.execute(
        sa.insert(PLANS).values(
            plan_id=new_plan_id, task_id=task_id, strategy=doc["strategy"], playbook=doc.get("playbook", ""),
            content_hash=content_hash(doc), plan=doc, version=version, previous_plan_id=plan_id, reason=reason,
            created_at=now,
        )
    )
    by_step = {row.step_id: row for row in rows}
    new_rows = []
    for position, spec in enumerate(parsed.steps.values()):
        row = by_step.get(spec.step_id)
        values: dict[str, Any] = {
            **_FRESH,
            "plan_id": new_plan_id, "task_id": task_id, "step_id": spec.step_id, "position": position,
            "skill": spec.skill, "depends_on": list(spec.depends_on), "state": "PENDING",
            "max_attempts": spec.retry.max_attempts, "idempotency_key": f"{task_id}/{spec.step_id}", "updated_at": now,
        }
        if row is not None and spec.step_id in used:
            # The alternative is another call: a key of its own; attempt numbers go on from the failed ones.
            values.update(idempotency_key=f"{task_id}/{spec.step_id}/v{version}", attempt_count=row.attempt_count,
                          max_attempts=row.attempt_count + spec.retry.max_attempts)
        elif row is not None:
            values.update({name: getattr(row, name) for name in _ROW_FIELDS})
            if row.state in _CARRIED:
                values["state"] = row.state
        new_rows.append(values)
    await conn.execute(sa.insert(STEPS), new_rows)
    await conn.execute(
        sa.update(STEPS)
        .where(STEPS.c.plan_id == plan_id, STEPS.c.state.in_(("PENDING", "WAITING_APPROVAL")))
        .values(state="CANCELLED", error_message=f"replaced by plan version {version}", finished_at=now, updated_at=now)
    )
    store._plans[new_plan_id] = parsed
    events = [("PLAN_CREATED", "", "", version)]
    return await store._advance(conn, task_id, new_plan_id, task_input, ahead=ahead, events=events)


def _why(row: Any, alternative: dict[str, Any]) -> str:
    error = f"{row.error_code} {row.error_message}".strip() or "failed"
    attempts = f" after {row.attempt_count} attempt{'s' if row.attempt_count != 1 else ''}" if row.attempt_count else ""
    agent = alternative.get("agent") or {}
    target = ", ".join(agent.get("names") or agent.get("patterns") or ()) or "the same agents"
    what = alternative.get("description") or f"skill {alternative.get('skill') or 'unchanged'} on {target}"
    return f"step {row.step_id} failed{attempts} ({error}); the new version runs its alternative: {what}"
