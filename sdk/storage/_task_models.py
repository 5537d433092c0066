"""Planner tables: tasks, their immutable plans, step runs and everything ``ExplainTask`` returns.

A task has plans (normally one; never overwritten), a plan has steps, a step has attempts. The
collaborator choices and the parameter substitution log are append-only. Sub-tasks are tasks whose
``parent_task_id`` names the task whose agent started them, so an explanation is a tree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from agentmesh.storage._base import Base
from agentmesh.storage._states import APPROVAL_STATES, STEP_STATES, TASK_STATES, one_of
from agentmesh.storage._types import BigIntPK, JSONDoc, UTCDateTime

__all__ = [
    "CollaboratorChoice",
    "ParameterSubstitution",
    "Plan",
    "PlanRejection",
    "PlanStep",
    "StepApproval",
    "StepAttempt",
    "Task",
    "TaskEvent",
]

_ID = 64
_IDENTITY = 512
# Steps a planner may claim: ready ones, and running ones whose lease lapsed (their planner died).
_CLAIMABLE = text("state IN ('READY', 'RUNNING')")


class Task(Base):
    """``tasks``: one submitted task.

    Columns: ``task_id`` (primary key); ``request_id`` (client-chosen idempotency key, unique per
    ``submitted_by``; NULL when not given); ``goal``; ``input`` (JSON object); ``playbook``; ``state``
    (TaskState name: PENDING, PLANNING, RUNNING, SUCCEEDED, FAILED, CANCELLED); ``output`` (JSON, when
    succeeded); ``error``; ``conversation_id`` -> conversations; ``parent_task_id`` -> tasks (sub-tasks);
    ``submitted_by`` (SPIFFE id); ``on_behalf_of`` (end user); ``trace_id`` (32 hex); ``created_at``;
    ``updated_at``; ``parent_step_id`` (the parent's step whose agent started this sub-task); ``depth``
    (0 from outside, parent + 1 for a sub-task); ``deadline_at`` (when the whole task must have ended);
    ``tenant`` and ``scopes`` (space-separated) of the end user, carried into step tokens. Indexed for "newest first" paging and the ListTasks filters.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        one_of("state", TASK_STATES),
        UniqueConstraint("submitted_by", "request_id"),
        Index(None, "created_at", "task_id"),
        Index(None, "state"),
        Index(None, "conversation_id"),
        Index(None, "parent_task_id"),
    )

    task_id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    goal: Mapped[str] = mapped_column(Text, default="", server_default="")
    input: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    playbook: Mapped[str] = mapped_column(String(128), default="", server_default="")
    state: Mapped[str] = mapped_column(String(16), default="PENDING", server_default="PENDING")
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    error: Mapped[str] = mapped_column(Text, default="", server_default="")
    conversation_id: Mapped[str | None] = mapped_column(
        String(_ID), ForeignKey("conversations.conversation_id", ondelete="SET NULL")
    )
    parent_task_id: Mapped[str | None] = mapped_column(
        String(_ID), ForeignKey("tasks.task_id", ondelete="SET NULL")
    )
    submitted_by: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    on_behalf_of: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    trace_id: Mapped[str] = mapped_column(String(32), default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    parent_step_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
    depth: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    deadline_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    tenant: Mapped[str] = mapped_column(String(128), default="", server_default="")
    scopes: Mapped[str] = mapped_column(Text, default="", server_default="")

    plans: Mapped[list[Plan]] = relationship(
        back_populates="task", cascade="all, delete-orphan", passive_deletes=True
    )


class Plan(Base):
    """``plans``: an immutable DAG of steps made for a task. Rows are inserted once and never updated.

    Columns: ``plan_id`` (primary key); ``task_id`` -> tasks; ``strategy`` (PlanStrategy name: PLAYBOOK,
    LLM, CAPABILITY_MATCH); ``playbook``; ``content_hash`` (SHA-256 hex of the canonical plan JSON);
    ``plan`` (the whole plan document as JSON, steps in topological order); ``created_at``; ``version``
    (from 1 per task); ``previous_plan_id`` (the plan a re-plan replaced); ``reason`` (why it was made).
    """

    __tablename__ = "plans"
    __table_args__ = (Index(None, "task_id"),)

    plan_id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="CASCADE"))
    strategy: Mapped[str] = mapped_column(String(32))
    playbook: Mapped[str] = mapped_column(String(128), default="", server_default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    plan: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    previous_plan_id: Mapped[str | None] = mapped_column(String(_ID))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")

    task: Mapped[Task] = relationship(back_populates="plans")
    steps: Mapped[list[PlanStep]] = relationship(
        back_populates="plan",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="PlanStep.position",
    )


class PlanStep(Base):
    """``plan_steps``: the run state of one step of a plan, ``(plan_id, step_id)`` unique.

    Claiming (durable execution): ``SELECT ... WHERE state = 'READY' OR (state = 'RUNNING' AND
    lease_expires_at < :now) ... FOR UPDATE SKIP LOCKED`` then set ``state='RUNNING'``, ``lease_owner``,
    ``lease_expires_at`` and ``attempt_count + 1``; the partial index ``ix_plan_steps_claimable`` covers
    that. Columns: ``id`` (surrogate key); ``plan_id`` -> plans; ``task_id`` -> tasks (denormalized so
    per-task reads need no join); ``step_id``; ``position`` (topological order); ``skill``;
    ``depends_on`` (JSON list of step ids); ``state`` (StepState name); ``attempt_count``;
    ``max_attempts``; ``not_before`` (earliest next attempt, for backoff); ``lease_owner`` (planner
    replica id); ``lease_expires_at``; ``idempotency_key`` (sent to the agent, same for every attempt);
    ``agent_namespace``, ``agent_name``, ``agent_version``, ``agent_endpoint``, ``agent_instance_id``
    (the agent resolved for the latest attempt); ``input`` (resolved input, JSON); ``output`` (accepted
    output, JSON); ``error_code``; ``error_message``; ``started_at``; ``finished_at``; ``updated_at``.
    """

    __tablename__ = "plan_steps"
    __table_args__ = (
        one_of("state", STEP_STATES),
        UniqueConstraint("plan_id", "step_id"),
        Index(None, "task_id"),
        Index(
            "ix_plan_steps_claimable",
            "state",
            "lease_expires_at",
            postgresql_where=_CLAIMABLE,
            sqlite_where=_CLAIMABLE,
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("plans.plan_id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    skill: Mapped[str] = mapped_column(String(128), default="", server_default="")
    depends_on: Mapped[list[str]] = mapped_column(JSONDoc, default=list, server_default=text("'[]'"))
    state: Mapped[str] = mapped_column(String(16), default="PENDING", server_default="PENDING")
    attempt_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str] = mapped_column(String(128), default="", server_default="")
    agent_namespace: Mapped[str] = mapped_column(String(63), default="", server_default="")
    agent_name: Mapped[str] = mapped_column(String(63), default="", server_default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="", server_default="")
    agent_endpoint: Mapped[str] = mapped_column(String(255), default="", server_default="")
    agent_instance_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    input: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    error_code: Mapped[str] = mapped_column(String(32), default="", server_default="")
    error_message: Mapped[str] = mapped_column(Text, default="", server_default="")
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())

    plan: Mapped[Plan] = relationship(back_populates="steps")
    attempts: Mapped[list[StepAttempt]] = relationship(
        back_populates="plan_step",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="StepAttempt.attempt",
    )


class StepAttempt(Base):
    """``step_attempts``: the execution log, one row per attempt at a step, ``(plan_step_id, attempt)`` unique.

    Columns: ``plan_step_id`` -> plan_steps; ``task_id`` -> tasks and ``step_id`` (denormalized for
    ExplainTask); ``attempt`` (from 1); ``agent_namespace``, ``agent_name``, ``agent_version``,
    ``agent_endpoint``, ``agent_instance_id`` (the agent called); ``state`` (StepState name: RUNNING
    while in flight, then SUCCEEDED or FAILED); ``error_code`` (gRPC status name); ``error_message``;
    ``trace_id``; ``started_at``; ``finished_at``; ``model_usages`` (JSON list of {model, version,
    latency}); ``replayed`` (the agent replayed an earlier run); ``planner`` (replica that ran it).
    """

    __tablename__ = "step_attempts"
    __table_args__ = (
        one_of("state", STEP_STATES),
        UniqueConstraint("plan_step_id", "attempt"),
        Index(None, "task_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    plan_step_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("plan_steps.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer)
    agent_namespace: Mapped[str] = mapped_column(String(63), default="", server_default="")
    agent_name: Mapped[str] = mapped_column(String(63), default="", server_default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="", server_default="")
    agent_endpoint: Mapped[str] = mapped_column(String(255), default="", server_default="")
    agent_instance_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    state: Mapped[str] = mapped_column(String(16), default="RUNNING", server_default="RUNNING")
    error_code: Mapped[str] = mapped_column(String(32), default="", server_default="")
    error_message: Mapped[str] = mapped_column(Text, default="", server_default="")
    trace_id: Mapped[str] = mapped_column(String(32), default="", server_default="")
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    model_usages: Mapped[list[Any]] = mapped_column(JSONDoc, default=list, server_default=text("'[]'"))
    replayed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    planner: Mapped[str] = mapped_column(String(128), default="", server_default="")

    plan_step: Mapped[PlanStep] = relationship(back_populates="attempts")


class CollaboratorChoice(Base):
    """``collaborator_choices``: how the agent of one step was chosen (append-only).

    Columns: ``task_id`` -> tasks; ``plan_id`` -> plans (NULL when chosen while planning, before the
    plan was stored); ``step_id``; ``query`` (the DiscoverAgentsRequest as JSON); ``candidates`` (the
    ranked answer as a JSON list); ``chosen`` (ResolvedAgent as JSON); ``reason``; ``created_at``;
    ``attempt`` (the attempt the choice was made for).
    """

    __tablename__ = "collaborator_choices"
    __table_args__ = (Index(None, "task_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="CASCADE"))
    plan_id: Mapped[str | None] = mapped_column(String(_ID), ForeignKey("plans.plan_id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(String(128))
    query: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    candidates: Mapped[list[Any]] = mapped_column(JSONDoc, default=list, server_default=text("'[]'"))
    chosen: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))


class ParameterSubstitution(Base):
    """``parameter_substitutions``: one resolved ``${...}`` reference of a step input (append-only).

    Columns: ``task_id`` -> tasks; ``step_id``; ``attempt`` (the attempt whose input it was, from 1);
    ``field_path`` (JSON path within the input); ``template`` (e.g. "${steps.lookup.output.email}");
    ``value`` (the resolved JSON value, any type, PII redacted); ``source`` (e.g. "steps.lookup.output");
    ``created_at``; ``source_step_id`` (the step the value came from, if any).
    """

    __tablename__ = "parameter_substitutions"
    __table_args__ = (Index(None, "task_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    field_path: Mapped[str] = mapped_column(Text, default="", server_default="")
    template: Mapped[str] = mapped_column(Text, default="", server_default="")
    value: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    source: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    source_step_id: Mapped[str] = mapped_column(String(128), default="", server_default="")


class StepApproval(Base):
    """``step_approvals``: a step's request for a human decision and its outcome, ``(task_id, step_id)`` unique.

    Columns: ``task_id`` -> tasks; ``step_id``; ``state`` (ApprovalState name: PENDING, APPROVED, REJECTED,
    TIMED_OUT); ``reason`` (why approval is needed); ``decided_by`` (identity); ``comment``;
    ``requested_at``; ``decided_at``; ``deadline_at`` (a PENDING request past it times out).
    """

    __tablename__ = "step_approvals"
    __table_args__ = (
        one_of("state", APPROVAL_STATES),
        UniqueConstraint("task_id", "step_id"),
        Index(None, "state", "deadline_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="PENDING", server_default="PENDING")
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    decided_by: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    comment: Mapped[str] = mapped_column(Text, default="", server_default="")
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    deadline_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class TaskEvent(Base):
    """``task_events``: what WatchTask streams, in order; ``id`` is the resume cursor (append-only).

    Columns: ``id``; ``task_id`` -> tasks; ``type`` (TaskEventType name without prefix: TASK_STATE,
    PLAN_CREATED, STEP_STATE, ATTEMPT, APPROVAL); ``step_id``; ``state`` (the new state, when a state
    changed); ``attempt``; ``created_at``.
    """

    __tablename__ = "task_events"
    __table_args__ = (Index(None, "task_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))
    step_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
    state: Mapped[str] = mapped_column(String(16), default="", server_default="")
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())


class PlanRejection(Base):
    """``plan_rejections``: a proposed plan that failed validation, kept for ExplainTask (append-only).

    Columns: ``task_id`` -> tasks; ``strategy`` (PlanStrategy name); ``reason``; ``proposed`` (the plan as
    received, JSON); ``created_at``.
    """

    __tablename__ = "plan_rejections"
    __table_args__ = (Index(None, "task_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="CASCADE"))
    strategy: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    proposed: Mapped[Any] = mapped_column(JSONDoc, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
