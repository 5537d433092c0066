"""The planner's SQL: tasks, plans and step runs, one statement per state transition.

Hot-path transitions (claim, renew, attempt start and end) are single Core statements; a step's end and
what it unblocks run in one transaction that first locks the task row, so two replicas finishing sibling
steps never both miss the step that joins them. Steps are claimed with ``FOR UPDATE SKIP LOCKED`` in
batches on PostgreSQL (SQLite transactions are IMMEDIATE, one writer at a time, one planner).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy as sa
from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeDecorator

from agentmesh._errors import FailedPreconditionError, NotFoundError
from agentmesh.audit import AuditEntry, append_audit
from agentmesh.services.planner import replanning
from agentmesh.services.planner.pipelined import (
    CLAIM_UNBLOCKED,
    StepRow,
    finish_pipelined,
    finish_speculative,
)
from agentmesh.services.planner.plans import PlanDocument, content_hash
from agentmesh.services.planner.rules import evaluate
from agentmesh.services.planner.templates import Scope, Substitution, resolve
from agentmesh.storage import (
    CollaboratorChoice,
    ParameterSubstitution,
    Plan,
    PlanRejection,
    PlanStep,
    StepApproval,
    StepAttempt,
    Task,
    TaskEvent,
    batched_pipeline,
    psycopg_connection,
    queue_begin,
    queue_commit,
    utcnow,
    write,
)

__all__ = [
    "TASK_EVENTS_CHANNEL",
    "AttemptEnd",
    "AttemptFinish",
    "AttemptStart",
    "ClaimAhead",
    "Claimed",
    "PlannerStore",
    "Prestart",
    "StartRequest",
    "TaskRow",
]

TASKS = Task.__table__
PLANS = Plan.__table__
STEPS = PlanStep.__table__
ATTEMPTS = StepAttempt.__table__
CHOICES = CollaboratorChoice.__table__
SUBSTITUTIONS = ParameterSubstitution.__table__
APPROVALS = StepApproval.__table__
EVENTS = TaskEvent.__table__
REJECTIONS = PlanRejection.__table__

FINAL_TASK_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
DONE_STEP_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED"})


def _p(name: str, column: Any = None, **kwargs: Any) -> Any:
    """A bound parameter of a hot-path statement (typed like ``column``)."""
    return sa.bindparam(f"p_{name}", type_=None if column is None else column.type, **kwargs)


# The hot path's statements, built (and their cache keys computed) once: per step, only parameters change.
_CLAIMED = (STEPS.c.id, STEPS.c.task_id, STEPS.c.plan_id, STEPS.c.step_id, STEPS.c.attempt_count,
            STEPS.c.max_attempts, STEPS.c.idempotency_key, STEPS.c.agent_instance_id, STEPS.c.agent_endpoint)
_LEASE = {
    "state": "RUNNING",
    "lease_owner": _p("owner", STEPS.c.lease_owner),
    "lease_expires_at": _p("lease", STEPS.c.lease_expires_at),
    "attempt_count": STEPS.c.attempt_count + 1,
    "started_at": sa.func.coalesce(STEPS.c.started_at, _p("now", STEPS.c.started_at)),
    "updated_at": _p("now", STEPS.c.updated_at),
}
_IS_RUNNABLE = sa.or_(
    sa.and_(
        STEPS.c.state == "READY",
        sa.or_(STEPS.c.not_before.is_(None), STEPS.c.not_before <= _p("now", STEPS.c.not_before)),
    ),
    sa.and_(STEPS.c.state == "RUNNING", STEPS.c.lease_expires_at < _p("now", STEPS.c.lease_expires_at)),
)
_LIMIT = sa.bindparam("p_limit", type_=sa.Integer())
_RUNNABLE = sa.select(STEPS.c.id).where(_IS_RUNNABLE).order_by(STEPS.c.id).limit(_LIMIT).with_for_update(skip_locked=True)
_CLAIM = sa.update(STEPS).where(STEPS.c.id.in_(_RUNNABLE.scalar_subquery())).values(_LEASE).returning(*_CLAIMED)
# On PostgreSQL a claim first locks the tasks of the steps it may take (skipping tasks in a transition), as
# every transition does: a task's events then get their ids in the order their transactions commit, so a watch
# that has read up to an event never misses one of that task committed later with a smaller id. SKIP LOCKED on
# both: a claim never waits, so it never deadlocks with a transition.
_CLAIMABLE_TASKS = (
    sa.select(TASKS.c.task_id)
    .where(TASKS.c.task_id.in_(
        sa.select(STEPS.c.task_id).where(_IS_RUNNABLE).order_by(STEPS.c.id).limit(_LIMIT).scalar_subquery()))
    .order_by(TASKS.c.task_id)
    .with_for_update(key_share=True, skip_locked=True)
    .cte("claimable_tasks")
)
_CLAIM_LOCKED = (
    sa.update(STEPS)
    .where(STEPS.c.id.in_(
        sa.select(STEPS.c.id)
        .where(_IS_RUNNABLE, STEPS.c.task_id.in_(sa.select(_CLAIMABLE_TASKS.c.task_id)))
        .order_by(STEPS.c.id)
        .limit(_LIMIT)
        .with_for_update(skip_locked=True)
        .scalar_subquery()))
    .values(_LEASE)
    .returning(*_CLAIMED)
)
_CLAIM_UNBLOCKED = (
    sa.update(STEPS)
    .where(
        STEPS.c.plan_id == _p("plan_id", STEPS.c.plan_id),
        STEPS.c.step_id.in_(_p("ids", STEPS.c.step_id, expanding=True)),
        STEPS.c.state == "PENDING",
    )
    .values(_LEASE)
    .returning(*_CLAIMED)
)
_OUTPUTS = sa.select(STEPS.c.step_id, STEPS.c.output).where(
    STEPS.c.plan_id == _p("plan_id", STEPS.c.plan_id), STEPS.c.state == "SUCCEEDED"
)
_PLAN_STEPS = sa.select(STEPS.c.step_id, STEPS.c.state, STEPS.c.output, STEPS.c.attempt_count).where(
    STEPS.c.plan_id == _p("plan_id", STEPS.c.plan_id)
)
_AGENT_KEYS = ("namespace", "name", "version", "endpoint", "instance_id")
_AGENT = tuple(f"agent_{key}" for key in _AGENT_KEYS)
_SET_AGENT = (
    sa.update(STEPS)
    .where(STEPS.c.id == _p("row_id", STEPS.c.id))
    .values({**{c: _p(c, STEPS.c[c]) for c in _AGENT}, "input": _p("input", STEPS.c.input)})
)
# An attempt started by the transaction that claims its step (row id not read yet: found by plan and step).
_THIS_STEP = (STEPS.c.plan_id == _p("plan_id", STEPS.c.plan_id), STEPS.c.step_id == _p("step_id", STEPS.c.step_id))
_PRESTART_ATTEMPT = sa.insert(ATTEMPTS).inline().values(
    plan_step_id=sa.select(STEPS.c.id).where(*_THIS_STEP).scalar_subquery(),
    **{c: _p(c, ATTEMPTS.c[c]) for c in ("task_id", "step_id", "attempt", *_AGENT, "state", "trace_id", "planner",
                                         "started_at")},
)
_END_ATTEMPT = (
    sa.update(ATTEMPTS)
    .where(ATTEMPTS.c.plan_step_id == _p("row_id", ATTEMPTS.c.plan_step_id),
           ATTEMPTS.c.attempt == _p("attempt", ATTEMPTS.c.attempt))
    .values({c: _p(c, ATTEMPTS.c[c])
             for c in ("state", "error_code", "error_message", "finished_at", "model_usages", "replayed")})
)
_END_COLUMNS = {
    "SUCCEEDED": ("output", "finished_at"),
    "READY": ("not_before", "error_code", "error_message"),
    "FAILED": ("error_code", "error_message", "finished_at"),
}
_END_STEP = {
    state: sa.update(STEPS)
    .where(
        STEPS.c.id == _p("row_id", STEPS.c.id),
        STEPS.c.lease_owner == _p("owner", STEPS.c.lease_owner),
        STEPS.c.attempt_count == _p("attempt", STEPS.c.attempt_count),
        STEPS.c.state == "RUNNING",
    )
    .values({"state": state, **{c: _p(c, STEPS.c[c]) for c in columns}, "lease_owner": None,
             "lease_expires_at": None, "updated_at": _p("now", STEPS.c.updated_at)})
    for state, columns in _END_COLUMNS.items()
}
# Pending steps a transition moves on, by (PostgreSQL?, new state): compiled once, on PostgreSQL with the ids as
# one array parameter, so the statement goes to psycopg as it is (it runs in a pipeline on the hot path).
_MOVE_PENDING = {
    (postgres, state): sa.update(STEPS)
    .where(STEPS.c.plan_id == _p("plan_id", STEPS.c.plan_id), STEPS.c.state == "PENDING",
           STEPS.c.step_id == sa.func.any(sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.String())))
           if postgres else STEPS.c.step_id.in_(_p("ids", STEPS.c.step_id, expanding=True)))
    .values(state=state, updated_at=_p("now", STEPS.c.updated_at),
            **({"finished_at": _p("now", STEPS.c.finished_at)} if state == "SKIPPED" else {}))
    for postgres in (True, False)
    for state in ("READY", "SKIPPED", "WAITING_APPROVAL")
}
_END_TASK = (
    sa.update(TASKS)
    .where(TASKS.c.task_id == _p("task_id", TASKS.c.task_id), TASKS.c.state.notin_(FINAL_TASK_STATES))
    .values(state=_p("state", TASKS.c.state), error=_p("error", TASKS.c.error), output=_p("output", TASKS.c.output),
            updated_at=_p("now", TASKS.c.updated_at))
)
_INSERT = {table.name: sa.insert(table) for table in (ATTEMPTS, CHOICES, SUBSTITUTIONS)}
# Inserts that fetch nothing back (no implicit RETURNING of the new key): they can go in a pipeline.
_BLIND_INSERT = {
    table.name: sa.insert(table).inline() for table in (TASKS, PLANS, STEPS, ATTEMPTS, CHOICES, SUBSTITUTIONS, EVENTS)
}


_EVENTS_AFTER = (
    sa.select(EVENTS.c.id, EVENTS.c.type, EVENTS.c.step_id, EVENTS.c.state, EVENTS.c.attempt, EVENTS.c.created_at)
    .where(EVENTS.c.task_id == _p("task_id", EVENTS.c.task_id), EVENTS.c.id > _p("cursor", EVENTS.c.id))
    .order_by(EVENTS.c.id)
    .limit(sa.bindparam("p_limit", type_=sa.Integer()))
)
_NEXT_EVENTS = _EVENTS_AFTER.subquery("e")
_WATCH_READ = sa.select(
    TASKS,
    sa.select(sa.func.coalesce(
        sa.func.json_agg(aggregate_order_by(
            sa.func.json_build_array(
                _NEXT_EVENTS.c.id, _NEXT_EVENTS.c.type, _NEXT_EVENTS.c.step_id, _NEXT_EVENTS.c.state,
                _NEXT_EVENTS.c.attempt,
                sa.cast(sa.func.extract("epoch", _NEXT_EVENTS.c.created_at) * sa.literal_column("1000000"), sa.BigInteger),
            ),
            _NEXT_EVENTS.c.id,
        )),
        sa.literal_column("'[]'::json"),
    )).scalar_subquery().label("events"),
).where(TASKS.c.task_id == _p("task_id", TASKS.c.task_id))
_WATCH_COLUMNS = (*(column.name for column in TASKS.columns), "events")
# The task columns whose type loads values itself (``UTCDateTime``): the raw read applies the same loader.
_WATCH_LOADERS = {
    column.name: column.type.process_result_value for column in TASKS.columns if isinstance(column.type, TypeDecorator)
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@functools.cache
def _watch_read_sql(dialect: Any) -> str:
    """``_WATCH_READ`` as psycopg runs it (named parameters), compiled once."""
    return str(_WATCH_READ.compile(dialect=dialect))
_TASK = sa.select(TASKS).where(TASKS.c.task_id == _p("task_id", TASKS.c.task_id))
# Task events are announced on this channel as "<task id> <replica>" when their transaction commits.
TASK_EVENTS_CHANNEL = "agentmesh_task_events"
# Events in their order (ids follow it: the watch cursor), and the notice to other replicas, in one statement.
_PG_EVENTS = (
    "WITH added AS (INSERT INTO task_events (task_id, type, step_id, state, attempt, created_at) "
    "SELECT e.task_id, e.type, e.step_id, e.state, e.attempt, %s FROM unnest(%s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::int[]) WITH ORDINALITY AS e(task_id, type, step_id, state, attempt, position) ORDER BY e.position) "
    f"SELECT pg_notify('{TASK_EVENTS_CHANNEL}', t || ' ' || %s) FROM unnest(%s::text[]) AS t"
)


class EventRow(NamedTuple):
    """A task event as WatchTask streams it."""

    id: int
    type: str
    step_id: str
    state: str
    attempt: int
    created_at: dt.datetime


@dataclass(frozen=True)
class TaskRow:
    """A task as stored."""

    task_id: str
    request_id: str | None
    goal: str
    input: dict[str, Any]
    playbook: str
    state: str
    output: dict[str, Any] | None
    error: str
    conversation_id: str | None
    parent_task_id: str | None
    parent_step_id: str
    submitted_by: str
    on_behalf_of: str
    tenant: str
    scopes: str
    trace_id: str
    depth: int
    deadline_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, row: Any) -> TaskRow:
        """From a ``tasks`` row."""
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Claimed:
    """A step this replica holds the lease of, for one attempt."""

    row_id: int
    task_id: str
    plan_id: str
    step_id: str
    attempt: int
    max_attempts: int
    idempotency_key: str
    previous_instance_id: str
    previous_endpoint: str


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended."""

    state: str  # SUCCEEDED or FAILED
    output: dict[str, Any] | None = None
    error_code: str = ""
    error_message: str = ""
    retryable: bool = False
    backoff: float = 0.0
    model_usages: Sequence[dict[str, Any]] = ()
    replayed: bool = False


@dataclass(frozen=True)
class AttemptStart:
    """An attempt to record before its call: the instance chosen (so a retry can go back to it) and why."""

    claimed: Claimed
    agent: Mapping[str, str]
    step_input: dict[str, Any]
    trace_id: str
    choice: dict[str, Any] | None = None
    substitutions: Sequence[Substitution] = ()


@dataclass(frozen=True)
class AttemptFinish:
    """How an attempt ended, and its audit record (appended in the transaction that records the end)."""

    claimed: Claimed
    end: AttemptEnd
    audit: AuditEntry | None = None


def _step_end(claimed: Claimed, end: AttemptEnd, now: dt.datetime) -> dict[str, Any]:
    """The step's columns after an attempt: SUCCEEDED, READY again (a retry after its backoff) or FAILED."""
    if end.state == "SUCCEEDED":
        return {"state": "SUCCEEDED", "output": end.output, "finished_at": now}
    if end.retryable and claimed.attempt < claimed.max_attempts:
        return {"state": "READY", "not_before": now + dt.timedelta(seconds=end.backoff),
                "error_code": end.error_code, "error_message": end.error_message[:4000]}
    return {"state": "FAILED", "error_code": end.error_code, "error_message": end.error_message[:4000],
            "finished_at": now}


@dataclass(frozen=True)
class StartRequest:
    """A step a transition is about to claim, for :attr:`ClaimAhead.prepare`."""

    task_id: str
    plan_id: str
    step_id: str
    attempt: int
    outputs: Mapping[str, Any]  # the plan's succeeded steps' outputs, as the claiming transaction reads them
    task_input: dict[str, Any]


@dataclass(frozen=True)
class Prestart:
    """An attempt start made by :attr:`ClaimAhead.prepare`: what is recorded, and what the caller keeps for the call."""

    start: AttemptStart
    call: Any


@dataclass
class ClaimAhead:
    """Ask a transition to claim, in its own transaction, up to ``limit`` steps it makes runnable.

    After the transition commits, ``steps`` holds the steps claimed for this replica (with a ``lease_ttl``
    lease, exactly as :meth:`PlannerStore.claim` would), and ``ready_left`` says whether it left runnable
    steps for the claim loop (more than ``limit``, or a retry waiting for its backoff).
    """

    limit: int
    lease_ttl: float
    steps: list[Claimed] = field(default_factory=list)
    ready_left: bool = False
    # On PostgreSQL, ``prepare(StartRequest)`` may make a claimed step's attempt start (agent chosen, input
    # resolved) without waiting; the claiming transaction then records it too (no separate start round trip).
    prepare: Callable[[StartRequest], Prestart | None] | None = None
    prestarted: dict[tuple[str, str], Prestart] = field(default_factory=dict)  # by (plan id, step id)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class PlannerStore:
    """All planner reads and writes; one instance per planner process."""

    def __init__(self, engine: AsyncEngine, *, owner: str) -> None:
        self.engine = engine
        # Reads never take SQLite's write lock (transactions begin IMMEDIATE by default); PostgreSQL ignores it.
        self.reader = engine.execution_options(sqlite_begin="DEFERRED")
        self.postgres = engine.dialect.name == "postgresql"
        # Single-statement reads on the hot path: on PostgreSQL in autocommit, so no BEGIN and ROLLBACK round trips.
        self.single = engine.execution_options(isolation_level="AUTOCOMMIT") if self.postgres else self.reader
        self.owner = owner
        self._plans: dict[str, PlanDocument] = {}
        lock = sa.select(TASKS.c.state).where(TASKS.c.task_id == _p("task_id", TASKS.c.task_id))
        # FOR NO KEY UPDATE: serializes a task's transitions, yet lets rows referencing the task (attempts,
        # events; their foreign keys take KEY SHARE) be inserted meanwhile, so claims never wait on it.
        self._lock = lock.with_for_update(key_share=True) if self.postgres else lock
        many = (
            sa.select(TASKS.c.task_id, TASKS.c.state)
            .where(TASKS.c.task_id.in_(sa.bindparam("p_task_ids", expanding=True)))
            .order_by(TASKS.c.task_id)
        )
        self._lock_many = many.with_for_update(key_share=True) if self.postgres else many
        # What a step attempt reads of its task never changes (input, deadline, identities): read once per task.
        self._tasks: dict[str, TaskRow] = {}
        # How tasks ended in this process's transactions (state, error, output, time), until the engine asks.
        self._endings: dict[str, tuple[str, str, dict[str, Any] | None, dt.datetime]] = {}
        # The step-end writer's own connection (PostgreSQL, autocommit): ends are written one batch at a time, so
        # one connection kept open spares each batch a pool checkout and checkin (~0.25 ms of a step's path).
        self._writer: AsyncConnection | None = None
        self._writer_lock = asyncio.Lock()
        # Each running plan's steps as this replica's last committed transition of it left them (PostgreSQL): what
        # the next step end expects, checked by the database (see ``finish_speculative``), so it may be stale.
        self._steps: dict[str, list[StepRow]] = {}

    # ---- tasks and plans ---------------------------------------------------------------------------------

    async def find_request(self, submitted_by: str, request_id: str) -> TaskRow | None:
        """The task an earlier submission with this request id made, if any."""
        async with self.single.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(TASKS).where(TASKS.c.submitted_by == submitted_by, TASKS.c.request_id == request_id)
                )
            ).first()
        return TaskRow.of(row) if row else None

    async def create_task(
        self,
        values: dict[str, Any],
        plan: dict[str, Any],
        *,
        reason: str,
        rejections: Sequence[tuple[str, str, Any]] = (),
        claim: ClaimAhead | None = None,
    ) -> TaskRow:
        """Store a task with its first plan and steps, and mark the steps that can start; idempotent on request id.
        ``plan`` must be valid already (what ``Planner.plan`` returns is).

        Returns the stored task: the new one, or the one an earlier submission with the same
        ``(submitted_by, request_id)`` made (a concurrent duplicate loses the insert and reads the winner).
        """
        task_id = values["task_id"]
        ahead = _Ahead(claim)
        document = PlanDocument.trusted(plan)  # Planner.plan validated it (a playbook's once, at render)
        plan_id = _new_id("plan")
        now = utcnow()
        try:
            # One round trip on PostgreSQL (a pipeline; the first steps' claims are read once it has synced).
            async with self._pipelined() as conn:
                await write(conn, _BLIND_INSERT[TASKS.name],
                            {**values, "state": "RUNNING", "created_at": now, "updated_at": now})
                await write(conn, _BLIND_INSERT[PLANS.name], {
                    "plan_id": plan_id, "task_id": task_id, "strategy": plan["strategy"],
                    "playbook": plan.get("playbook", ""), "content_hash": content_hash(plan), "plan": plan,
                    "version": 1, "reason": reason, "created_at": now,
                })
                await write(
                    conn,
                    _BLIND_INSERT[STEPS.name],
                    [
                        {
                            "plan_id": plan_id,
                            "task_id": task_id,
                            "step_id": step.step_id,
                            "position": position,
                            "skill": step.skill,
                            "depends_on": list(step.depends_on),
                            "state": "PENDING",
                            "max_attempts": step.retry.max_attempts,
                            "idempotency_key": f"{task_id}/{step.step_id}",
                            "updated_at": now,
                        }
                        for position, step in enumerate(document.steps.values())
                    ],
                )
                if rejections:
                    await conn.execute(
                        sa.insert(REJECTIONS).inline(),
                        [
                            {"task_id": task_id, "strategy": s, "reason": r, "proposed": p, "created_at": now}
                            for s, r, p in rejections
                        ],
                    )
                self._plans[plan_id] = document
                task = self._remember(TaskRow(**values, state="RUNNING", output=None, error="", created_at=now,
                                              updated_at=now))  # before its first steps are claimed and started
                fresh = [StepRow(step_id, "PENDING", None, 0) for step_id in document.steps] if self.postgres else None
                ended = await self._advance(conn, task_id, plan_id, values["input"], ahead=ahead, rows=fresh,
                                            events=[("TASK_STATE", "", "RUNNING", 0), ("PLAN_CREATED", "", "", 0)])
            await ahead.take_deferred()
            ahead.publish()
            self._keep_steps(ahead)
        except (IntegrityError, UniqueViolation):
            # In a pipeline the duplicate key surfaces at whichever later statement syncs first, as psycopg's own
            # error when that statement went to the driver directly. Nothing was stored: forget what was cached.
            self._tasks.pop(task_id, None)
            self._plans.pop(plan_id, None)
            if values.get("request_id"):
                existing = await self.find_request(values["submitted_by"], values["request_id"])
                if existing is not None:
                    return existing
            raise
        if ended or _has_approvals(document):
            return await self.get_task(task_id)  # it ended, or may wait for an approval already: as stored
        return task

    async def get_task(self, task_id: str) -> TaskRow:
        """One task; NotFoundError when there is none."""
        async with self.single.connect() as conn:
            row = (await conn.execute(_TASK, {"p_task_id": task_id})).first()
        if row is None:
            raise NotFoundError(f"no task {task_id!r}")
        return self._remember(TaskRow.of(row))

    def cached_plan(self, plan_id: str) -> PlanDocument | None:
        """A plan document this process stored or read, if cached (plans are immutable)."""
        return self._plans.get(plan_id)

    async def ended_task(self, task_id: str) -> TaskRow:
        """A task a committed transaction of this process just ended: as cached with how it ended (no read), or
        as stored."""
        ending, task = self._endings.pop(task_id, None), self._tasks.get(task_id)
        if ending is None or task is None:
            return await self.get_task(task_id)
        state, error, output, now = ending
        return dataclasses.replace(task, state=state, error=error, output=output, updated_at=now)

    @contextlib.asynccontextmanager
    async def writer(self) -> AsyncIterator[AsyncConnection]:
        """The connection step ends are written on (one at a time); after any error it is dropped, and the next
        use connects again."""
        async with self._writer_lock:
            conn = self._writer
            if conn is None or conn.closed or conn.invalidated:
                conn = self._writer = await self.single.connect()
            try:
                yield conn
            except BaseException:
                self._writer = None
                with contextlib.suppress(Exception):
                    await conn.close()
                raise

    async def close(self) -> None:
        """Close the writer's connection (before the engine is disposed)."""
        async with self._writer_lock:
            conn, self._writer = self._writer, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    def known_steps(self, plan_id: str) -> list[StepRow] | None:
        """A plan's steps as this replica last left them, if it knows (maybe out of date: check before use)."""
        return self._steps.get(plan_id)

    def forget_steps(self, plan_ids: Iterable[str]) -> None:
        for plan_id in plan_ids:
            self._steps.pop(plan_id, None)

    def _keep_steps(self, ahead: _Ahead) -> None:
        """After a commit: the plans' steps as the transition left them (a plan whose task ended is dropped)."""
        if len(self._steps) >= 10_000:
            self._steps.clear()
        for plan_id, rows in ahead.plans.items():
            if rows is None:
                self._steps.pop(plan_id, None)
            else:
                self._steps[plan_id] = rows

    def cached_task(self, task_id: str) -> TaskRow | None:
        """A task this process read or stored lately (its fixed fields: input, identities, trace id), if cached."""
        return self._tasks.get(task_id)

    def _remember(self, task: TaskRow) -> TaskRow:
        if len(self._tasks) >= 10_000:
            self._tasks.clear()
            self._endings.clear()
        self._tasks[task.task_id] = task
        return task

    async def list_tasks(
        self,
        *,
        limit: int,
        after: tuple[dt.datetime, str] | None,
        state: str = "",
        conversation_id: str = "",
        submitted_by: str = "",
        parent_task_id: str = "",
        tenant: str | None = None,
    ) -> list[TaskRow]:
        """Tasks newest first, after a (created_at, task_id) position, filtered (``tenant``: of that tenant only,
        also when it is "")."""
        query = sa.select(TASKS).order_by(TASKS.c.created_at.desc(), TASKS.c.task_id.desc()).limit(limit)
        if after is not None:
            query = query.where(
                sa.or_(
                    TASKS.c.created_at < after[0],
                    sa.and_(TASKS.c.created_at == after[0], TASKS.c.task_id < after[1]),
                )
            )
        for column, value in (
            (TASKS.c.state, state),
            (TASKS.c.conversation_id, conversation_id),
            (TASKS.c.submitted_by, submitted_by),
            (TASKS.c.parent_task_id, parent_task_id),
        ):
            if value:
                query = query.where(column == value)
        if tenant is not None:
            query = query.where(TASKS.c.tenant == tenant)
        async with self.reader.connect() as conn:
            return [TaskRow.of(r) for r in (await conn.execute(query))]

    async def count_children(self, parent_task_id: str) -> int:
        """How many sub-tasks a task has."""
        async with self.reader.connect() as conn:
            query = sa.select(sa.func.count()).select_from(TASKS).where(TASKS.c.parent_task_id == parent_task_id)
            return int((await conn.execute(query)).scalar_one())

    async def step_state(self, task_id: str, step_id: str) -> str | None:
        """The state of one step of a task's current plan."""
        async with self.reader.connect() as conn:
            query = (
                sa.select(STEPS.c.state)
                .where(STEPS.c.task_id == task_id, STEPS.c.step_id == step_id)
                .order_by(STEPS.c.id.desc())  # the newest plan version's row (re-planning adds rows)
                .limit(1)
            )
            return (await conn.execute(query)).scalar_one_or_none()

    async def plan(self, plan_id: str) -> PlanDocument:
        """A plan document (immutable, so cached forever)."""
        document = self._plans.get(plan_id)
        if document is None:
            async with self.single.connect() as conn:
                doc = (await conn.execute(sa.select(PLANS.c.plan).where(PLANS.c.plan_id == plan_id))).scalar_one()
            document = self._plans[plan_id] = PlanDocument.trusted(doc)  # validated before it was stored
        return document

    # ---- durable execution -------------------------------------------------------------------------------

    async def claim(self, limit: int, lease_ttl: float) -> list[Claimed]:
        """Claim up to ``limit`` runnable steps (ready, or running under a lapsed lease) with a fresh lease."""
        async with self.engine.begin() as conn:
            claim = _CLAIM_LOCKED if self.postgres else _CLAIM  # SQLite: one writer at a time already
            rows = (await conn.execute(claim, {**self._lease(lease_ttl), "p_limit": limit})).all()
            if rows:
                await self._events(conn, None, [("STEP_STATE", r.step_id, "RUNNING", r.attempt_count, r.task_id) for r in rows])
        return [Claimed(*row) for row in rows]

    def _lease(self, lease_ttl: float) -> dict[str, Any]:
        """The parameters of a claim: this replica's lease of ``lease_ttl`` seconds from now."""
        now = utcnow()
        return {"p_owner": self.owner, "p_lease": now + dt.timedelta(seconds=lease_ttl), "p_now": now}

    async def renew(self, row_ids: Sequence[int], lease_ttl: float) -> set[int]:
        """Extend the leases this replica still holds on running steps; returns the ids still held."""
        if not row_ids:
            return set()
        now = utcnow()
        # Rows locked right now are being finished by this replica: skip them rather than wait (no deadlock).
        mine = (
            sa.select(STEPS.c.id)
            .where(STEPS.c.id.in_(list(row_ids)), STEPS.c.lease_owner == self.owner, STEPS.c.state == "RUNNING")
            .order_by(STEPS.c.id)
            .with_for_update(skip_locked=True)
        )
        statement = (
            sa.update(STEPS)
            .where(STEPS.c.id.in_(mine.scalar_subquery()))
            .values(lease_expires_at=now + dt.timedelta(seconds=lease_ttl))
            .returning(STEPS.c.id)
        )
        async with self.engine.begin() as conn:
            renewed = {row.id for row in await conn.execute(statement)}
            if self.postgres and len(renewed) < len(row_ids):
                # Skipped because locked is not lost: count a step as held while its row still names us.
                query = sa.select(STEPS.c.id).where(
                    STEPS.c.id.in_(list(set(row_ids) - renewed)),
                    STEPS.c.lease_owner == self.owner,
                    STEPS.c.state == "RUNNING",
                )
                renewed |= {row.id for row in await conn.execute(query)}
            return renewed

    async def step_inputs(self, claimed: Claimed, *, outputs: bool = True) -> tuple[TaskRow, Scope]:
        """The task of a claimed step and what its templates may refer to (succeeded outputs, unless not asked)."""
        task = self._tasks.get(claimed.task_id) or await self.get_task(claimed.task_id)
        done: dict[str, Any] = {}
        if outputs:
            async with self.single.connect() as conn:
                done = {r.step_id: r.output for r in await conn.execute(_OUTPUTS, {"p_plan_id": claimed.plan_id})}
        document = await self.plan(claimed.plan_id)
        return task, Scope(task.input, done, document.aliases)

    async def start_attempts(self, starts: Sequence[AttemptStart]) -> None:
        """Record attempts before their calls, all in one transaction (group commit): the agent and instance
        chosen (so a retry can go back to it), the choice and the substitutions. A few statements however many."""
        ordered = sorted(starts, key=lambda s: s.claimed.row_id)  # one lock order for step rows
        agents, attempts, choices, substitutions = self._start_rows(ordered)
        async with self._pipelined() as conn:
            await write(conn, _SET_AGENT, [{"p_row_id": s.claimed.row_id, **a} for s, a in zip(ordered, agents, strict=True)])
            await write(conn, _BLIND_INSERT[ATTEMPTS.name],
                               [{"plan_step_id": s.claimed.row_id, **a} for s, a in zip(ordered, attempts, strict=True)])
            await self._start_log(conn, choices, substitutions)

    def _prepare_starts(
        self, ahead: _Ahead, task_id: str, plan_id: str, task_input: dict[str, Any], rows: Sequence[Any],
        take: Sequence[str], attempts: Mapping[str, int],
    ) -> dict[str, Prestart]:
        """The attempt starts ``ahead``'s ``prepare`` makes for steps a pipeline is about to claim (by step)."""
        prepare = ahead.claim.prepare if ahead.claim is not None else None
        if prepare is None:
            return {}
        outputs = {r.step_id: r.output for r in rows if r.state == "SUCCEEDED"}
        made = {step_id: prepare(StartRequest(task_id, plan_id, step_id, attempts[step_id], outputs, task_input))
                for step_id in take}
        return {step_id: p for step_id, p in made.items() if p is not None}

    async def _prestart(self, conn: AsyncConnection, ahead: _Ahead, plan_id: str, prestarts: Mapping[str, Prestart]) -> None:
        """Inside a claiming pipeline, after the claim (which set the steps' agents and inputs): the attempts'
        rows, choices and substitutions."""
        if not prestarts:
            return
        _, started, choices, substitutions = self._start_rows([p.start for p in prestarts.values()])
        await write(conn, _PRESTART_ATTEMPT, [
            {"p_plan_id": plan_id, "p_step_id": step_id, **{f"p_{k}": v for k, v in a.items()}}
            for step_id, a in zip(prestarts, started, strict=True)
        ])
        await self._start_log(conn, choices, substitutions)
        ahead.prestarted.update({(plan_id, step_id): p for step_id, p in prestarts.items()})

    def _start_rows(
        self, starts: Sequence[AttemptStart]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """What recording attempt starts writes: step agent columns (as parameters), attempt rows (without the
        step row id), collaborator choices and substitutions."""
        now = utcnow()
        agents: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        choices: list[dict[str, Any]] = []
        substitutions: list[dict[str, Any]] = []
        for start in starts:
            claimed = start.claimed
            chosen = {f"agent_{key}": start.agent.get(key, "") for key in _AGENT_KEYS}
            agents.append({"p_input": start.step_input, **{f"p_{k}": v for k, v in chosen.items()}})
            attempts.append({"task_id": claimed.task_id, "step_id": claimed.step_id, "attempt": claimed.attempt,
                             **chosen, "state": "RUNNING", "trace_id": start.trace_id, "planner": self.owner,
                             "started_at": now})
            if start.choice is not None:
                choices.append({"task_id": claimed.task_id, "plan_id": claimed.plan_id, "step_id": claimed.step_id,
                                "attempt": claimed.attempt, "created_at": now, **start.choice})
            substitutions += [
                {"task_id": claimed.task_id, "step_id": claimed.step_id, "attempt": claimed.attempt,
                 "field_path": s.field_path, "template": s.template, "value": s.value, "source": s.source,
                 "source_step_id": s.source_step_id, "created_at": now}
                for s in start.substitutions
            ]
        return agents, attempts, choices, substitutions

    @staticmethod
    async def _start_log(conn: AsyncConnection, choices: list[dict[str, Any]], substitutions: list[dict[str, Any]]) -> None:
        if choices:
            await write(conn, _BLIND_INSERT[CHOICES.name], choices)
        if substitutions:
            await write(conn, _BLIND_INSERT[SUBSTITUTIONS.name], substitutions)

    @contextlib.asynccontextmanager
    async def _pipelined(self) -> AsyncIterator[AsyncConnection]:
        """A write-only transaction: on PostgreSQL its statements are pipelined (sent without waiting, COMMIT
        waits once: one round trip), elsewhere a plain transaction. Nothing inside may read a result (rows or
        rowcounts are not there yet); an error surfaces at the end, and the connection is then discarded."""
        if not self.postgres:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self.single.connect() as conn:  # autocommit: the BEGIN goes out with the statements
            driver = await psycopg_connection(conn)
            try:
                async with batched_pipeline(driver):
                    await queue_begin(driver)
                    yield conn
                    await queue_commit(driver)
            except BaseException:
                await conn.invalidate()
                raise

    async def finish_attempts(self, finishes: Sequence[AttemptFinish], claim: ClaimAhead | None = None) -> list[str]:
        """Record how attempts ended and move their plans on, all in ONE transaction (group commit), with each
        attempt's audit record. Per attempt: "lost" when the lease was lost meanwhile (or the task had already
        ended), "ended" when the task ended, else "recorded". With ``claim``, the steps this unblocks are claimed
        for this replica in the same transaction (no claim round trip, no wait), up to its limit in all."""
        if self.postgres:
            for finish in (finish_speculative, finish_pipelined):  # one round trip, else two
                ahead = _Ahead(claim)
                results = await finish(self, finishes, ahead)
                if results is not None:
                    ahead.publish()
                    self._keep_steps(ahead)
                    return results
        self.forget_steps(f.claimed.plan_id for f in finishes)
        ahead = _Ahead(claim)
        async with self.engine.begin() as conn:
            results = await self._finish(conn, finishes, ahead)
        ahead.publish()
        return results

    async def _finish(self, conn: AsyncConnection, finishes: Sequence[AttemptFinish], ahead: _Ahead) -> list[str]:
        now = utcnow()
        task_ids = sorted({f.claimed.task_id for f in finishes})
        # Task rows in one order (every batch, every replica): two batches never wait on each other in a cycle.
        states: dict[str, str] = {
            row.task_id: row.state for row in await conn.execute(self._lock_many, {"p_task_ids": task_ids})
        }
        await self._end_attempts(conn, finishes, now)
        results = ["recorded"] * len(finishes)
        events: list[tuple[Any, ...]] = []
        succeeded: dict[str, str] = {}  # task -> plan to advance
        failed: dict[str, AttemptFinish] = {}  # task -> its first step that failed for good
        for index in sorted(range(len(finishes)), key=lambda i: (finishes[i].claimed.task_id, finishes[i].claimed.row_id)):
            claimed, end = finishes[index].claimed, finishes[index].end
            if states.get(claimed.task_id) in FINAL_TASK_STATES:
                # Cancelled or failed meanwhile: the attempt is recorded; the step stays as the task left it.
                events.append(("ATTEMPT", claimed.step_id, end.state, claimed.attempt, claimed.task_id))
                results[index] = "lost"
                continue
            values = _step_end(claimed, end, now)
            changed = await conn.execute(
                _END_STEP[values["state"]],
                {"p_row_id": claimed.row_id, "p_owner": self.owner, "p_attempt": claimed.attempt, "p_now": now,
                 **{f"p_{k}": v for k, v in values.items() if k != "state"}},
            )
            if changed.rowcount == 0:
                results[index] = "lost"
                continue
            events += [("ATTEMPT", claimed.step_id, end.state, claimed.attempt, claimed.task_id),
                       ("STEP_STATE", claimed.step_id, values["state"], claimed.attempt, claimed.task_id)]
            if values["state"] == "SUCCEEDED":
                succeeded.setdefault(claimed.task_id, claimed.plan_id)
            elif values["state"] == "READY":
                ahead.ready_left = True
            else:
                failed.setdefault(claimed.task_id, finishes[index])
        ended: set[str] = set()
        for task_id in task_ids:
            if task_id in failed:
                claimed, end = failed[task_id].claimed, failed[task_id].end
                task_input = await self._task_input(conn, task_id)
                await self._flush_events(conn, events)  # re-planning writes its own events after these
                if await replanning.after_failure(
                    self, conn, task_id, claimed.plan_id, claimed.step_id, task_input, ahead
                ):
                    continue  # the task goes on under a new plan version (now, or once siblings end)
                await self._end_task(
                    conn, task_id, "FAILED", sink=events,
                    error=f"step {claimed.step_id} failed: {end.error_code} {end.error_message}".strip(),
                )
                ended.add(task_id)
            elif task_id in succeeded:
                task_input = await self._task_input(conn, task_id)
                if await self._advance(conn, task_id, succeeded[task_id], task_input, ahead=ahead, sink=events):
                    ended.add(task_id)
        await self._flush_events(conn, events)
        await append_audit(conn, [f.audit for f in finishes if f.audit is not None])  # last: the chain lock
        return [
            "ended" if result == "recorded" and f.claimed.task_id in ended else result
            for f, result in zip(finishes, results, strict=True)
        ]

    @staticmethod
    async def _end_attempts(conn: AsyncConnection, finishes: Sequence[AttemptFinish], now: dt.datetime) -> None:
        """Record how the attempts ended (on PostgreSQL queued, in a pipeline or not)."""
        await write(conn, _END_ATTEMPT, [
            {"p_row_id": f.claimed.row_id, "p_attempt": f.claimed.attempt, "p_state": f.end.state,
             "p_error_code": f.end.error_code, "p_error_message": f.end.error_message[:4000],
             "p_finished_at": now, "p_model_usages": list(f.end.model_usages), "p_replayed": f.end.replayed}
            for f in finishes
        ])

    async def _task_input(self, conn: AsyncConnection, task_id: str) -> dict[str, Any]:
        """A task's input (it never changes: read once per task)."""
        task = self._tasks.get(task_id)
        if task is None:
            row = (await conn.execute(_TASK, {"p_task_id": task_id})).one()
            task = self._remember(TaskRow.of(row))
        return task.input

    async def _flush_events(self, conn: AsyncConnection, events: list[tuple[Any, ...]]) -> None:
        """Insert the events collected so far (each carries its task id) and empty the list."""
        if events:
            await self._events(conn, None, events)
            events.clear()

    async def _lock_task(self, conn: AsyncConnection, task_id: str, *, with_input: bool = False) -> Any:
        """Lock a task row for a transition; its state (and input, when asked: a task's input never changes)."""
        state = str((await conn.execute(self._lock, {"p_task_id": task_id})).scalar_one())
        if not with_input:
            return state
        task = self._tasks.get(task_id)
        if task is None:
            row = (await conn.execute(_TASK, {"p_task_id": task_id})).one()
            task = self._remember(TaskRow.of(row))
        return state, task.input

    async def _advance(
        self,
        conn: AsyncConnection,
        task_id: str,
        plan_id: str,
        task_input: dict[str, Any],
        *,
        ahead: _Ahead | None = None,
        events: Sequence[tuple[Any, ...]] = (),
        sink: list[tuple[Any, ...]] | None = None,
        rows: Sequence[Any] | None = None,
    ) -> bool:
        """Move every pending step whose dependencies are done to READY, SKIPPED or WAITING_APPROVAL; end the task
        when every step is done (then True). Runs until nothing changes (a skip can unblock or skip its dependents).

        With ``ahead``, up to its limit of the steps made READY are claimed at once (RUNNING under this replica's
        lease, as a claim would). ``events`` are written with the ones this adds (one INSERT), or, with ``sink``,
        added to it (each with its task id) for the caller to write.

        With ``rows`` (the plan's steps as already read: step_id, state, output, attempt_count), the caller runs
        this inside a psycopg pipeline (PostgreSQL): nothing is read, claims are queued (``ahead.deferred``)."""
        document = await self.plan(plan_id)
        pipelined = rows is not None
        if rows is None:
            rows = (await conn.execute(_PLAN_STEPS, {"p_plan_id": plan_id})).all()
        states = {r.step_id: r.state for r in rows}
        if "FAILED" in states.values():  # only while a re-plan waits for this plan's running steps
            if sink:
                await self._flush_events(conn, sink)
            if events:
                await self._events(conn, task_id, events)
            return await replanning.resume(self, conn, task_id, plan_id, task_input, ahead)
        now = utcnow()
        outputs, changes, approvals = _plan_changes(document, states, rows, task_input, task_id, now)
        running: list[tuple[Any, ...]] = []
        for new in ("READY", "SKIPPED", "WAITING_APPROVAL"):
            ids = [s for s, v in changes.items() if v == new]
            if new == "READY" and ids and ahead is not None and ahead.limit > 0:
                take, ids = ids[: ahead.limit], ids[ahead.limit :]
                lease = {**self._lease(ahead.lease_ttl), "p_plan_id": plan_id, "p_ids": take}
                if pipelined:  # under the task's lock every one of them is PENDING: each is claimed
                    attempts = {r.step_id: r.attempt_count + 1 for r in rows}
                    prestarts = self._prepare_starts(ahead, task_id, plan_id, task_input, rows, take, attempts)
                    driver = await psycopg_connection(conn)
                    params = {k[2:]: v for k, v in lease.items()} | _claim_agents(take, prestarts)
                    ahead.deferred.append(await driver.execute(CLAIM_UNBLOCKED, params))
                    running = [("STEP_STATE", step_id, "RUNNING", attempts[step_id]) for step_id in take]
                    ahead.limit -= len(take)
                    await self._prestart(conn, ahead, plan_id, prestarts)
                else:
                    claimed = (await conn.execute(_CLAIM_UNBLOCKED, lease)).all()
                    ahead.take(claimed)
                    running = [("STEP_STATE", row.step_id, "RUNNING", row.attempt_count) for row in claimed]
            if new == "READY" and ids and ahead is not None:
                ahead.ready_left = True
            if ids:
                await write(conn, _MOVE_PENDING[self.postgres, new], {"p_plan_id": plan_id, "p_ids": ids, "p_now": now})
        if pipelined and ahead is not None:  # the plan as this transition leaves it, for the next one to expect
            attempts_now = {e[1]: e[3] for e in running}
            ahead.plans[plan_id] = [
                StepRow(r.step_id, "RUNNING" if r.step_id in attempts_now else states[r.step_id],
                        outputs.get(r.step_id), attempts_now.get(r.step_id, r.attempt_count))
                for r in rows
            ]
        events = [*events, *(("STEP_STATE", s, v, 0) for s, v in changes.items()), *running]
        if approvals:
            await conn.execute(sa.insert(APPROVALS).inline(), approvals)
            await conn.execute(
                sa.update(TASKS).where(TASKS.c.task_id == task_id).values(state="WAITING_APPROVAL", updated_at=now)
            )
            events += [("APPROVAL", a["step_id"], "PENDING", 0) for a in approvals]
            events.append(("TASK_STATE", "", "WAITING_APPROVAL", 0))
        if sink is not None:
            sink += [(*e[:4], task_id) for e in events]
        elif events:
            await self._events(conn, task_id, events)
        if all(v in DONE_STEP_STATES for v in states.values()):
            await self._end_task(conn, task_id, "SUCCEEDED", output=_task_output(document, states, outputs, task_input),
                                 sink=sink, steps_done=True, approvals=_has_approvals(document))
            if ahead is not None:
                ahead.plans[plan_id] = None
            return True
        return False

    async def _end_task(
        self,
        conn: AsyncConnection,
        task_id: str,
        state: str,
        *,
        error: str = "",
        output: dict[str, Any] | None = None,
        sink: list[tuple[Any, ...]] | None = None,
        steps_done: bool = False,
        approvals: bool = True,
    ) -> None:
        """Put a task in a final state; steps not done are SKIPPED (CANCELLED when cancelling), pending approvals
        rejected. ``steps_done``: every step is known done (no UPDATE); ``approvals=False``: the plan has no
        approval steps (no UPDATE); ``sink``: the event is added there instead of written."""
        now = utcnow()
        leftover = "CANCELLED" if state == "CANCELLED" else "SKIPPED"
        if not steps_done:
            await conn.execute(
                sa.update(STEPS)
                .where(STEPS.c.task_id == task_id, STEPS.c.state.notin_(DONE_STEP_STATES))
                .values(state=leftover, lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now)
            )
        if approvals:
            await conn.execute(
                sa.update(APPROVALS)
                .where(APPROVALS.c.task_id == task_id, APPROVALS.c.state == "PENDING")
                .values(state="REJECTED", comment=f"task {state.lower()}", decided_at=now)
            )
        await write(
            conn,
            _END_TASK,
            {"p_task_id": task_id, "p_state": state, "p_error": error[:4000], "p_output": output, "p_now": now},
        )
        self._endings[task_id] = (state, error[:4000], output, now)  # read once the transaction has committed
        if sink is not None:
            sink.append(("TASK_STATE", "", state, 0, task_id))
        else:
            await self._events(conn, task_id, [("TASK_STATE", "", state, 0)])

    async def _events(
        self, conn: AsyncConnection, task_id: str | None, events: Sequence[tuple[Any, ...]]
    ) -> None:
        now = utcnow()
        rows = [
            {
                "task_id": e[4] if len(e) > 4 else task_id,
                "type": e[0],
                "step_id": e[1],
                "state": e[2],
                "attempt": e[3],
                "created_at": now,
            }
            for e in events
        ]
        if not (self.postgres and rows):
            await write(conn, _BLIND_INSERT[EVENTS.name], rows)
            return
        # One statement however many events; other replicas' watchers of these tasks learn of them at the commit.
        driver = await psycopg_connection(conn)
        columns = [[row[key] for row in rows] for key in ("task_id", "type", "step_id", "state", "attempt")]
        await driver.execute(_PG_EVENTS, (now, *columns, self.owner, sorted({row["task_id"] for row in rows})))

    # ---- cancellation, approvals, deadlines --------------------------------------------------------------

    async def cancel(self, task_id: str, reason: str, *, by: str = "") -> TaskRow:
        """Cancel a task: nothing more is scheduled, running steps are CANCELLED (their calls abandoned)."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.select(TASKS.c.state).where(TASKS.c.task_id == task_id))).first()
            if row is None:
                raise NotFoundError(f"no task {task_id!r}")
            state = await self._lock_task(conn, task_id)
            if state in FINAL_TASK_STATES:
                if state != "CANCELLED":
                    raise FailedPreconditionError(f"task {task_id} already ended {state}; it cannot be cancelled")
            else:
                await self._end_task(conn, task_id, "CANCELLED", error=f"cancelled: {reason}" if reason else "cancelled")
                await append_audit(
                    conn,
                    [AuditEntry("task.cancel", resource=f"tasks/{task_id}", actor=by, detail={"reason": reason[:500]})],
                )
        return await self.get_task(task_id)

    async def decide(self, task_id: str, step_id: str, *, approve: bool, by: str, comment: str) -> dict[str, Any]:
        """Approve or reject a step waiting for approval; returns the decided approval row."""
        now = utcnow()
        lapsed_at = None
        async with self.engine.begin() as conn:
            state = await self._lock_task(conn, task_id) if await self._task_exists(conn, task_id) else None
            if state is None:
                raise NotFoundError(f"no task {task_id!r}")
            lapsed = sa.and_(APPROVALS.c.deadline_at.is_not(None), APPROVALS.c.deadline_at <= now)
            approval = (
                await conn.execute(
                    sa.select(APPROVALS, lapsed.label("lapsed"))
                    .where(APPROVALS.c.task_id == task_id, APPROVALS.c.step_id == step_id)
                )
            ).first()
            if approval is None:
                raise NotFoundError(f"step {step_id!r} of task {task_id} has no approval request")
            if approval.state != "PENDING":
                raise FailedPreconditionError(
                    f"step {step_id} of task {task_id} was already decided: {approval.state}"
                )
            if approval.lapsed:
                # Past its deadline but not yet swept: it timed out, whatever the decision says (recorded now,
                # as the sweep would, and committed before the caller hears so).
                await self._time_out_approval(conn, approval.id, task_id, step_id, now)
                lapsed_at = approval.deadline_at
            else:
                decision = "APPROVED" if approve else "REJECTED"
                await conn.execute(
                    sa.update(APPROVALS)
                    .where(APPROVALS.c.id == approval.id)
                    .values(state=decision, decided_by=by, comment=comment, decided_at=now)
                )
                await self._after_decision(conn, task_id, step_id, decision, by, comment, now)
                await append_audit(
                    conn,
                    [
                        AuditEntry(
                            "step.approve" if approve else "step.reject",
                            resource=f"tasks/{task_id}/steps/{step_id}",
                            actor=by,
                            detail={"comment": comment[:500]},
                        )
                    ],
                )
                row = (await conn.execute(sa.select(APPROVALS).where(APPROVALS.c.id == approval.id))).one()
        if lapsed_at is not None:
            raise FailedPreconditionError(
                f"the approval of step {step_id} of task {task_id} timed out at {lapsed_at.isoformat()}"
            )
        return dict(row._mapping)

    async def _time_out_approval(
        self, conn: AsyncConnection, approval_id: int, task_id: str, step_id: str, now: dt.datetime
    ) -> None:
        """An approval past its deadline: TIMED_OUT, the step rejected, the audit record."""
        await conn.execute(
            sa.update(APPROVALS).where(APPROVALS.c.id == approval_id).values(
                state="TIMED_OUT", comment="no decision before the deadline", decided_at=now
            )
        )
        await self._after_decision(conn, task_id, step_id, "TIMED_OUT", "", "", now)
        await append_audit(
            conn,
            [AuditEntry("step.approval_timeout", resource=f"tasks/{task_id}/steps/{step_id}",
                        actor=self.owner, outcome="DEADLINE_EXCEEDED")],
        )

    async def _task_exists(self, conn: AsyncConnection, task_id: str) -> bool:
        return (await conn.execute(sa.select(TASKS.c.task_id).where(TASKS.c.task_id == task_id))).first() is not None

    async def _after_decision(
        self, conn: AsyncConnection, task_id: str, step_id: str, decision: str, by: str, comment: str, now: dt.datetime
    ) -> None:
        events: list[tuple[Any, ...]] = [("APPROVAL", step_id, decision, 0)]
        if decision == "APPROVED":
            await conn.execute(
                sa.update(STEPS)
                .where(STEPS.c.task_id == task_id, STEPS.c.step_id == step_id, STEPS.c.state == "WAITING_APPROVAL")
                .values(state="READY", updated_at=now)
            )
            waiting = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(STEPS).where(
                        STEPS.c.task_id == task_id, STEPS.c.state == "WAITING_APPROVAL"
                    )
                )
            ).scalar_one()
            if not waiting:
                await conn.execute(
                    sa.update(TASKS)
                    .where(TASKS.c.task_id == task_id, TASKS.c.state == "WAITING_APPROVAL")
                    .values(state="RUNNING", updated_at=now)
                )
                events.append(("TASK_STATE", "", "RUNNING", 0))
            events.append(("STEP_STATE", step_id, "READY", 0))
            await self._events(conn, task_id, events)
            return
        why = "approval timed out" if decision == "TIMED_OUT" else f"rejected by {by}"
        await conn.execute(
            sa.update(STEPS)
            .where(STEPS.c.task_id == task_id, STEPS.c.step_id == step_id)
            .values(state="FAILED", error_code="PERMISSION_DENIED", error_message=f"{why}: {comment}".strip(": "),
                    finished_at=now, updated_at=now)
        )
        events.append(("STEP_STATE", step_id, "FAILED", 0))
        await self._events(conn, task_id, events)
        await self._end_task(conn, task_id, "FAILED", error=f"step {step_id} {why}" + (f": {comment}" if comment else ""))

    async def sweep(self) -> int:
        """Time out approvals and tasks past their deadline; returns how many were ended."""
        now = utcnow()
        ended = 0
        approvals = (
            sa.select(APPROVALS.c.id, APPROVALS.c.task_id, APPROVALS.c.step_id)
            .where(APPROVALS.c.state == "PENDING", APPROVALS.c.deadline_at < now)
            .limit(100)
            .with_for_update(skip_locked=True)
        )
        tasks = (
            sa.select(TASKS.c.task_id)
            .where(TASKS.c.state.in_(("RUNNING", "WAITING_APPROVAL")), TASKS.c.deadline_at < now)
            .limit(100)
            .with_for_update(skip_locked=True, key_share=True)
        )
        async with self.engine.begin() as conn:
            for row in (await conn.execute(approvals)).all():
                await self._time_out_approval(conn, row.id, row.task_id, row.step_id, now)
                ended += 1
            for row in (await conn.execute(tasks)).all():
                await self._end_task(conn, row.task_id, "FAILED", error="DEADLINE_EXCEEDED: the task ran past its deadline")
                ended += 1
        return ended

    # ---- reads for WatchTask and ExplainTask -------------------------------------------------------------

    async def watch_read(self, task_id: str, cursor: int, limit: int = 500) -> tuple[TaskRow, list[EventRow]]:
        """The task as it is now and its events after a cursor (at most ``limit``, in order), read in one snapshot
        so the task is as new as its newest event; one round trip on PostgreSQL (the events as one JSON array).
        NotFoundError when there is no such task."""
        params = {"p_task_id": task_id, "p_cursor": cursor, "p_limit": limit}
        if self.postgres:
            # Straight on psycopg (a watch reads at every commit of its task): SQLAlchemy's row processing of the
            # task's columns cost more than the read itself.
            async with self.single.connect() as conn:
                driver = await psycopg_connection(conn)
                found = await (await driver.execute(_watch_read_sql(conn.dialect), params)).fetchone()
            if found is None:
                raise NotFoundError(f"no task {task_id!r}")
            values = dict(zip(_WATCH_COLUMNS, found, strict=True))
            events = [EventRow(i, kind, step, state, attempt, _EPOCH + dt.timedelta(microseconds=micros))
                      for i, kind, step, state, attempt, micros in values.pop("events")]
            for name, load in _WATCH_LOADERS.items():  # what SQLAlchemy's result processing would do (UTC times)
                values[name] = load(values[name], conn.dialect)
            return self._remember(TaskRow(**{name: values[name] for name in TaskRow.__dataclass_fields__})), events
        async with self.reader.begin() as conn:  # one transaction: one snapshot
            rows = (await conn.execute(_EVENTS_AFTER, params)).all()
            task = (await conn.execute(_TASK, {"p_task_id": task_id})).first()
        if task is None:
            raise NotFoundError(f"no task {task_id!r}")
        return self._remember(TaskRow.of(task)), [EventRow(*row) for row in rows]

    async def explanation(self, task_id: str) -> dict[str, list[Any]]:
        """Every stored record about one task, each kind in order."""
        async with self.reader.connect() as conn:
            async def rows(query: Any) -> list[Any]:
                return list((await conn.execute(query)).all())

            return {
                "plans": await rows(sa.select(PLANS).where(PLANS.c.task_id == task_id).order_by(PLANS.c.version)),
                "steps": await rows(
                    sa.select(STEPS).where(STEPS.c.task_id == task_id).order_by(STEPS.c.plan_id, STEPS.c.position)
                ),
                "attempts": await rows(
                    sa.select(ATTEMPTS).where(ATTEMPTS.c.task_id == task_id).order_by(ATTEMPTS.c.started_at, ATTEMPTS.c.id)
                ),
                "choices": await rows(sa.select(CHOICES).where(CHOICES.c.task_id == task_id).order_by(CHOICES.c.id)),
                "substitutions": await rows(
                    sa.select(SUBSTITUTIONS).where(SUBSTITUTIONS.c.task_id == task_id).order_by(SUBSTITUTIONS.c.id)
                ),
                "approvals": await rows(
                    sa.select(APPROVALS).where(APPROVALS.c.task_id == task_id).order_by(APPROVALS.c.id)
                ),
                "rejections": await rows(
                    sa.select(REJECTIONS).where(REJECTIONS.c.task_id == task_id).order_by(REJECTIONS.c.id)
                ),
                "children": await rows(
                    sa.select(TASKS.c.task_id).where(TASKS.c.parent_task_id == task_id).order_by(TASKS.c.created_at)
                ),
            }


def _plan_changes(
    document: PlanDocument, states: dict[str, str], rows: Sequence[Any], task_input: dict[str, Any], task_id: str,
    now: dt.datetime,
) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]]]:
    """What a plan's step states make of its pending steps: READY, SKIPPED or WAITING_APPROVAL (until nothing
    changes: a skip can unblock or skip its dependents). Updates ``states``; returns the succeeded outputs, the
    changes and the approval rows to insert."""
    outputs = {r.step_id: r.output for r in rows if r.state == "SUCCEEDED"}
    changes: dict[str, str] = {}
    approvals: list[dict[str, Any]] = []
    progress = True
    while progress:
        progress = False
        for step_id, state in states.items():
            if state != "PENDING":
                continue
            spec = document.steps[step_id]
            deps = [states[d] for d in spec.depends_on]
            if any(d not in DONE_STEP_STATES for d in deps):
                continue
            scope = Scope(task_input, outputs, document.aliases)
            if any(d != "SUCCEEDED" for d in deps):
                new = "SKIPPED"
            elif spec.when and not evaluate(spec.when, scope.cel_activation(spec.when))[0]:
                new = "SKIPPED"
            elif spec.approval is not None and (
                not spec.approval.get("when")
                or evaluate(spec.approval["when"], scope.cel_activation(spec.approval["when"]))[0]
            ):
                new = "WAITING_APPROVAL"
                timeout = float(spec.approval.get("timeout") or 3600.0)
                approvals.append(
                    {
                        "task_id": task_id,
                        "step_id": step_id,
                        "state": "PENDING",
                        "reason": spec.approval.get("reason", ""),
                        "requested_at": now,
                        "deadline_at": now + dt.timedelta(seconds=timeout),
                    }
                )
            else:
                new = "READY"
            states[step_id] = changes[step_id] = new
            progress = True
    return outputs, changes, approvals


def _task_output(
    document: PlanDocument, states: dict[str, str], outputs: dict[str, Any], task_input: dict[str, Any]
) -> dict[str, Any]:
    """A finished plan's output: its ``output`` template resolved, else every succeeded step's output."""
    if document.doc.get("output"):
        output, _ = resolve(document.doc["output"], Scope(task_input, outputs, document.aliases))
        return dict(output)
    return {sid: outputs[sid] for sid in states if sid in outputs}


def _claim_agents(take: Sequence[str], prestarts: Mapping[str, Prestart]) -> dict[str, list[Any]]:
    """``CLAIM_UNBLOCKED``'s per-step columns: the chosen agent and resolved input of prestarted steps, NULL else."""
    agents = [prestarts[step_id].start.agent if step_id in prestarts else None for step_id in take]
    columns: dict[str, list[Any]] = {"ids": list(take)}
    for column, key in (("namespaces", "namespace"), ("names", "name"), ("versions", "version"),
                        ("endpoints", "endpoint"), ("instances", "instance_id")):
        columns[column] = [None if agent is None else agent.get(key, "") for agent in agents]
    columns["inputs"] = [Jsonb(prestarts[step_id].start.step_input) if step_id in prestarts else None for step_id in take]
    return columns


def _has_approvals(document: PlanDocument) -> bool:
    """Whether any step of a plan may wait for an approval."""
    return any(spec.approval is not None for spec in document.steps.values())


class _Ahead:
    """A transition's claims, handed to its :class:`ClaimAhead` only once the transaction has committed."""

    def __init__(self, claim: ClaimAhead | None) -> None:
        self.claim = claim
        self.limit = claim.limit if claim is not None else 0
        self.lease_ttl = claim.lease_ttl if claim is not None else 0.0
        self.steps: list[Claimed] = []
        self.ready_left = False
        self.deferred: list[Any] = []  # claims queued in a pipeline: cursors to read once it has synced
        self.prestarted: dict[tuple[str, str], Prestart] = {}
        self.plans: dict[str, list[StepRow] | None] = {}  # plan -> its steps as left (None: its task ended)

    def take(self, rows: Sequence[Any]) -> None:
        """Claimed step rows (as returned by a claim), to run once the transaction has committed."""
        self.steps += [Claimed(*row) for row in rows]

    async def take_deferred(self) -> None:
        """Once the pipeline has synced: the steps its queued claims took."""
        for cursor in self.deferred:
            self.take([tuple(row) for row in await cursor.fetchall()])

    def publish(self) -> None:
        if self.claim is not None:
            self.claim.steps = self.steps
            self.claim.ready_left = self.ready_left
            self.claim.prestarted = self.prestarted
