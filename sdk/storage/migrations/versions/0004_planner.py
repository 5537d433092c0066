"""Planner: durable execution, approvals, sub-tasks.

Adds sub-task and deadline columns to tasks, plan versions, attempt details (models, replay, replica),
the attempt of choices and substitutions, the CANCELLED and WAITING_APPROVAL states, and three tables:
step_approvals, task_events (WatchTask's resumable log) and plan_rejections.

Revision ID: 0004_planner
Revises: 0003_trust
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Spelled out here rather than imported from agentmesh.storage so this revision never changes later.
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)

revision: str = "0004_planner"
down_revision: str | None = "0003_trust"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_TASK_STATES = "'PENDING', 'PLANNING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'"
_NEW_TASK_STATES = _OLD_TASK_STATES + ", 'WAITING_APPROVAL'"
_OLD_STEP_STATES = "'PENDING', 'READY', 'RUNNING', 'SUCCEEDED', 'FAILED', 'SKIPPED'"
_NEW_STEP_STATES = _OLD_STEP_STATES + ", 'CANCELLED', 'WAITING_APPROVAL'"


def _swap_state_check(table: str, states: str) -> None:
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(op.f(f"ck_{table}_state"), type_="check")
        batch.create_check_constraint("state", f"state IN ({states})")


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("parent_step_id", sa.String(128), server_default="", nullable=False))
        batch.add_column(sa.Column("depth", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("deadline_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("tenant", sa.String(128), server_default="", nullable=False))
        batch.add_column(sa.Column("scopes", sa.Text(), server_default="", nullable=False))
        batch.drop_constraint(op.f("ck_tasks_state"), type_="check")
        batch.create_check_constraint("state", f"state IN ({_NEW_TASK_STATES})")
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False))
        batch.add_column(sa.Column("previous_plan_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("reason", sa.Text(), server_default="", nullable=False))
    _swap_state_check("plan_steps", _NEW_STEP_STATES)
    with op.batch_alter_table("step_attempts") as batch:
        batch.add_column(sa.Column("model_usages", JSON_DOC, server_default=sa.text("'[]'"), nullable=False))
        batch.add_column(sa.Column("replayed", sa.Boolean(), server_default=sa.text("false"), nullable=False))
        batch.add_column(sa.Column("planner", sa.String(128), server_default="", nullable=False))
        batch.drop_constraint(op.f("ck_step_attempts_state"), type_="check")
        batch.create_check_constraint("state", f"state IN ({_NEW_STEP_STATES})")
    with op.batch_alter_table("collaborator_choices") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False))
    with op.batch_alter_table("parameter_substitutions") as batch:
        batch.add_column(sa.Column("source_step_id", sa.String(128), server_default="", nullable=False))

    op.create_table(
        "step_approvals",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), server_default="PENDING", nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("decided_by", sa.String(512), server_default="", nullable=False),
        sa.Column("comment", sa.Text(), server_default="", nullable=False),
        sa.Column("requested_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.Column("deadline_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "state IN ('PENDING', 'APPROVED', 'REJECTED', 'TIMED_OUT')", name=op.f("ck_step_approvals_state")
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.task_id"], name=op.f("fk_step_approvals_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_approvals")),
        sa.UniqueConstraint("task_id", "step_id", name=op.f("uq_step_approvals_task_id_step_id")),
    )
    op.create_index(op.f("ix_step_approvals_state_deadline_at"), "step_approvals", ["state", "deadline_at"])
    op.create_table(
        "task_events",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("step_id", sa.String(128), server_default="", nullable=False),
        sa.Column("state", sa.String(16), server_default="", nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.task_id"], name=op.f("fk_task_events_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_events")),
    )
    op.create_index(op.f("ix_task_events_task_id_id"), "task_events", ["task_id", "id"])
    op.create_table(
        "plan_rejections",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("proposed", JSON_DOC, nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.task_id"], name=op.f("fk_plan_rejections_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_rejections")),
    )
    op.create_index(op.f("ix_plan_rejections_task_id"), "plan_rejections", ["task_id"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("plan_rejections")
    op.drop_table("task_events")
    op.drop_table("step_approvals")
    with op.batch_alter_table("parameter_substitutions") as batch:
        batch.drop_column("source_step_id")
    with op.batch_alter_table("collaborator_choices") as batch:
        batch.drop_column("attempt")
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_constraint(op.f("ck_step_attempts_state"), type_="check")
        batch.create_check_constraint("state", f"state IN ({_OLD_STEP_STATES})")
        batch.drop_column("planner")
        batch.drop_column("replayed")
        batch.drop_column("model_usages")
    _swap_state_check("plan_steps", _OLD_STEP_STATES)
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("reason")
        batch.drop_column("previous_plan_id")
        batch.drop_column("version")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(op.f("ck_tasks_state"), type_="check")
        batch.create_check_constraint("state", f"state IN ({_OLD_TASK_STATES})")
        batch.drop_column("scopes")
        batch.drop_column("tenant")
        batch.drop_column("deadline_at")
        batch.drop_column("depth")
        batch.drop_column("parent_step_id")
