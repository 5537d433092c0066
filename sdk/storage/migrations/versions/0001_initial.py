"""Initial schema: registry, tasks and plans, conversations, audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
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

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "agents",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("namespace", "name", name=op.f("uq_agents_namespace_name")),
    )
    op.create_table(
        "audit_records",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("record_time", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.String(length=512), server_default="", nullable=False),
        sa.Column("on_behalf_of", sa.String(length=512), server_default="", nullable=False),
        sa.Column("action", sa.String(length=256), nullable=False),
        sa.Column("resource", sa.String(length=512), server_default="", nullable=False),
        sa.Column("outcome", sa.String(length=32), server_default="OK", nullable=False),
        sa.Column("detail", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("trace_id", sa.String(length=32), server_default="", nullable=False),
        sa.Column("previous_hash", sa.String(length=64), server_default="", nullable=False),
        sa.Column("record_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_audit_records")),
        sa.UniqueConstraint("record_hash", name=op.f("uq_audit_records_record_hash")),
    )
    op.create_index(
        op.f("ix_audit_records_actor_sequence"), "audit_records", ["actor", "sequence"], unique=False
    )
    op.create_index(op.f("ix_audit_records_record_time"), "audit_records", ["record_time"], unique=False)
    op.create_index(
        op.f("ix_audit_records_resource_sequence"), "audit_records", ["resource", "sequence"], unique=False
    )

    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("title", sa.Text(), server_default="", nullable=False),
        sa.Column("version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("labels", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("owner", sa.String(length=512), server_default="", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_conversations")),
        sa.UniqueConstraint("owner", "request_id", name=op.f("uq_conversations_owner_request_id")),
    )
    op.create_index(
        op.f("ix_conversations_created_at_conversation_id"),
        "conversations",
        ["created_at", "conversation_id"],
        unique=False,
    )

    op.create_table(
        "policy_bits",
        sa.Column("policy", sa.String(length=128), nullable=False),
        sa.Column("bit", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("policy", name=op.f("pk_policy_bits")),
        sa.UniqueConstraint("bit", name=op.f("uq_policy_bits_bit")),
    )
    op.create_table(
        "registry_events",
        sa.Column("revision", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("namespace", sa.String(length=63), server_default="", nullable=False),
        sa.Column("name", sa.String(length=63), server_default="", nullable=False),
        sa.Column("instance_id", sa.String(length=64), server_default="", nullable=False),
        sa.Column("payload", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_registry_events")),
    )
    op.create_index(op.f("ix_registry_events_created_at"), "registry_events", ["created_at"], unique=False)

    op.create_table(
        "routing_policies",
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("weights", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("canary", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("updated_by", sa.String(length=512), server_default="", nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "name", name=op.f("pk_routing_policies")),
    )
    op.create_table(
        "agent_versions",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("agent_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=128), server_default="", nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("policies", JSON_DOC, server_default=sa.text("'[]'"), nullable=False),
        sa.Column("policy_mask", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("labels", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("owner", sa.String(length=256), server_default="", nullable=False),
        sa.Column("spiffe_id", sa.String(length=512), server_default="", nullable=False),
        sa.Column("card", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("card_hash", sa.String(length=64), server_default="", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_agent_versions_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_versions")),
        sa.UniqueConstraint("agent_id", "version", name=op.f("uq_agent_versions_agent_id_version")),
    )
    op.create_index(op.f("ix_agent_versions_purpose"), "agent_versions", ["purpose"], unique=False)

    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("goal", sa.Text(), server_default="", nullable=False),
        sa.Column("input", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("playbook", sa.String(length=128), server_default="", nullable=False),
        sa.Column("state", sa.String(length=16), server_default="PENDING", nullable=False),
        sa.Column("output", JSON_DOC, nullable=True),
        sa.Column("error", sa.Text(), server_default="", nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=True),
        sa.Column("parent_task_id", sa.String(length=64), nullable=True),
        sa.Column("submitted_by", sa.String(length=512), server_default="", nullable=False),
        sa.Column("on_behalf_of", sa.String(length=512), server_default="", nullable=False),
        sa.Column("trace_id", sa.String(length=32), server_default="", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "state IN ('PENDING', 'PLANNING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')",
            name=op.f("ck_tasks_state"),
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.conversation_id"],
            name=op.f("fk_tasks_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["parent_task_id"],
            ["tasks.task_id"],
            name=op.f("fk_tasks_parent_task_id_tasks"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("submitted_by", "request_id", name=op.f("uq_tasks_submitted_by_request_id")),
    )
    op.create_index(op.f("ix_tasks_conversation_id"), "tasks", ["conversation_id"], unique=False)
    op.create_index(op.f("ix_tasks_created_at_task_id"), "tasks", ["created_at", "task_id"], unique=False)
    op.create_index(op.f("ix_tasks_parent_task_id"), "tasks", ["parent_task_id"], unique=False)
    op.create_index(op.f("ix_tasks_state"), "tasks", ["state"], unique=False)

    op.create_table(
        "agent_instances",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("lease_id", sa.String(length=64), nullable=False),
        sa.Column("agent_version_id", sa.BigInteger(), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="SERVING", nullable=False),
        sa.Column("load", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_ttl_seconds", sa.Float(), nullable=False),
        sa.Column("registered_by", sa.String(length=512), server_default="", nullable=False),
        sa.Column("registered_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "state IN ('SERVING', 'DRAINING', 'NOT_SERVING')", name=op.f("ck_agent_instances_state")
        ),
        sa.ForeignKeyConstraint(
            ["agent_version_id"],
            ["agent_versions.id"],
            name=op.f("fk_agent_instances_agent_version_id_agent_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_agent_instances")),
        sa.UniqueConstraint("lease_id", name=op.f("uq_agent_instances_lease_id")),
    )
    op.create_index(
        op.f("ix_agent_instances_agent_version_id"), "agent_instances", ["agent_version_id"], unique=False
    )

    op.create_table(
        "agent_skills",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("agent_version_id", sa.BigInteger(), nullable=False),
        sa.Column("skill_name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("input_schema", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("output_schema", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("tags", JSON_DOC, server_default=sa.text("'[]'"), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_version_id"],
            ["agent_versions.id"],
            name=op.f("fk_agent_skills_agent_version_id_agent_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_skills")),
        sa.UniqueConstraint(
            "agent_version_id", "skill_name", name=op.f("uq_agent_skills_agent_version_id_skill_name")
        ),
    )
    op.create_index(op.f("ix_agent_skills_skill_name"), "agent_skills", ["skill_name"], unique=False)

    op.create_table(
        "conversation_messages",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("author", sa.String(length=512), server_default="", nullable=False),
        sa.Column("text", sa.Text(), server_default="", nullable=False),
        sa.Column("data", JSON_DOC, nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("hidden", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("role IN ('USER', 'AGENT', 'SYSTEM')", name=op.f("ck_conversation_messages_role")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.conversation_id"],
            name=op.f("fk_conversation_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.task_id"],
            name=op.f("fk_conversation_messages_task_id_tasks"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_conversation_messages")),
        sa.UniqueConstraint(
            "conversation_id", "version", name=op.f("uq_conversation_messages_conversation_id_version")
        ),
    )
    op.create_table(
        "parameter_substitutions",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("step_id", sa.String(length=128), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("field_path", sa.Text(), server_default="", nullable=False),
        sa.Column("template", sa.Text(), server_default="", nullable=False),
        sa.Column("value", JSON_DOC, nullable=True),
        sa.Column("source", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.task_id"],
            name=op.f("fk_parameter_substitutions_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parameter_substitutions")),
    )
    op.create_index(
        op.f("ix_parameter_substitutions_task_id"), "parameter_substitutions", ["task_id"], unique=False
    )

    op.create_table(
        "plans",
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("playbook", sa.String(length=128), server_default="", nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("plan", JSON_DOC, nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.task_id"], name=op.f("fk_plans_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("plan_id", name=op.f("pk_plans")),
    )
    op.create_index(op.f("ix_plans_task_id"), "plans", ["task_id"], unique=False)

    op.create_table(
        "agent_leases",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["agent_instances.instance_id"],
            name=op.f("fk_agent_leases_instance_id_agent_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_agent_leases")),
    )
    op.create_index(op.f("ix_agent_leases_expires_at"), "agent_leases", ["expires_at"], unique=False)

    op.create_table(
        "collaborator_choices",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=True),
        sa.Column("step_id", sa.String(length=128), nullable=False),
        sa.Column("query", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("candidates", JSON_DOC, server_default=sa.text("'[]'"), nullable=False),
        sa.Column("chosen", JSON_DOC, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["plans.plan_id"],
            name=op.f("fk_collaborator_choices_plan_id_plans"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.task_id"],
            name=op.f("fk_collaborator_choices_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collaborator_choices")),
    )
    op.create_index(
        op.f("ix_collaborator_choices_task_id"), "collaborator_choices", ["task_id"], unique=False
    )

    op.create_table(
        "plan_steps",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("step_id", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("skill", sa.String(length=128), server_default="", nullable=False),
        sa.Column("depends_on", JSON_DOC, server_default=sa.text("'[]'"), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="PENDING", nullable=False),
        sa.Column("attempt_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("not_before", TIMESTAMP, nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), server_default="", nullable=False),
        sa.Column("agent_namespace", sa.String(length=63), server_default="", nullable=False),
        sa.Column("agent_name", sa.String(length=63), server_default="", nullable=False),
        sa.Column("agent_version", sa.String(length=64), server_default="", nullable=False),
        sa.Column("agent_endpoint", sa.String(length=255), server_default="", nullable=False),
        sa.Column("agent_instance_id", sa.String(length=64), server_default="", nullable=False),
        sa.Column("input", JSON_DOC, nullable=True),
        sa.Column("output", JSON_DOC, nullable=True),
        sa.Column("error_code", sa.String(length=32), server_default="", nullable=False),
        sa.Column("error_message", sa.Text(), server_default="", nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "state IN ('PENDING', 'READY', 'RUNNING', 'SUCCEEDED', 'FAILED', 'SKIPPED')",
            name=op.f("ck_plan_steps_state"),
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.plan_id"], name=op.f("fk_plan_steps_plan_id_plans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.task_id"], name=op.f("fk_plan_steps_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_steps")),
        sa.UniqueConstraint("plan_id", "step_id", name=op.f("uq_plan_steps_plan_id_step_id")),
    )
    op.create_index(
        "ix_plan_steps_claimable",
        "plan_steps",
        ["state", "lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("state IN ('READY', 'RUNNING')"),
        sqlite_where=sa.text("state IN ('READY', 'RUNNING')"),
    )
    op.create_index(op.f("ix_plan_steps_task_id"), "plan_steps", ["task_id"], unique=False)

    op.create_table(
        "step_attempts",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("plan_step_id", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("step_id", sa.String(length=128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("agent_namespace", sa.String(length=63), server_default="", nullable=False),
        sa.Column("agent_name", sa.String(length=63), server_default="", nullable=False),
        sa.Column("agent_version", sa.String(length=64), server_default="", nullable=False),
        sa.Column("agent_endpoint", sa.String(length=255), server_default="", nullable=False),
        sa.Column("agent_instance_id", sa.String(length=64), server_default="", nullable=False),
        sa.Column("state", sa.String(length=16), server_default="RUNNING", nullable=False),
        sa.Column("error_code", sa.String(length=32), server_default="", nullable=False),
        sa.Column("error_message", sa.Text(), server_default="", nullable=False),
        sa.Column("trace_id", sa.String(length=32), server_default="", nullable=False),
        sa.Column("started_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "state IN ('PENDING', 'READY', 'RUNNING', 'SUCCEEDED', 'FAILED', 'SKIPPED')",
            name=op.f("ck_step_attempts_state"),
        ),
        sa.ForeignKeyConstraint(
            ["plan_step_id"],
            ["plan_steps.id"],
            name=op.f("fk_step_attempts_plan_step_id_plan_steps"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.task_id"], name=op.f("fk_step_attempts_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_attempts")),
        sa.UniqueConstraint("plan_step_id", "attempt", name=op.f("uq_step_attempts_plan_step_id_attempt")),
    )
    op.create_index(
        op.f("ix_step_attempts_task_id_started_at"), "step_attempts", ["task_id", "started_at"], unique=False
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("step_attempts")
    op.drop_table("plan_steps")
    op.drop_table("collaborator_choices")
    op.drop_table("agent_leases")
    op.drop_table("plans")
    op.drop_table("parameter_substitutions")
    op.drop_table("conversation_messages")
    op.drop_table("agent_skills")
    op.drop_table("agent_instances")
    op.drop_table("tasks")
    op.drop_table("agent_versions")
    op.drop_table("routing_policies")
    op.drop_table("registry_events")
    op.drop_table("policy_bits")
    op.drop_table("conversations")
    op.drop_table("audit_records")
    op.drop_table("agents")
