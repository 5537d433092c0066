"""Conversations: request ids and rollback.

``conversation_messages`` gains ``parent_version`` (the version a message follows), ``rolled_back_to``
(set on the SYSTEM message a rollback writes) and ``request_id`` (SendMessage idempotency, unique per
conversation) and ``on_behalf_of`` (the end user a write was for); ``conversations`` gains ``on_behalf_of``
and ``tenant`` (the end user it belongs to) and indexes for listing one owner's or one end user's
conversations newest first.

Revision ID: 0005_conversations
Revises: 0004_planner
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_conversations"
down_revision: str | None = "0004_planner"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("on_behalf_of", sa.String(length=512), server_default="", nullable=False))
        batch.add_column(sa.Column("tenant", sa.String(length=128), server_default="", nullable=False))
    with op.batch_alter_table("conversation_messages") as batch:
        batch.add_column(sa.Column("on_behalf_of", sa.String(length=512), server_default="", nullable=False))
        batch.add_column(sa.Column("parent_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("rolled_back_to", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
        batch.create_unique_constraint(
            op.f("uq_conversation_messages_conversation_id_request_id"), ["conversation_id", "request_id"]
        )
    # Messages written before this revision followed the version just before theirs.
    op.execute("UPDATE conversation_messages SET parent_version = version - 1")
    op.create_index(
        op.f("ix_conversations_owner_created_at_conversation_id"),
        "conversations",
        ["owner", "created_at", "conversation_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_conversations_tenant_on_behalf_of_created_at_conversation_id"),
        "conversations",
        ["tenant", "on_behalf_of", "created_at", "conversation_id"],
        unique=False,
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(
        op.f("ix_conversations_tenant_on_behalf_of_created_at_conversation_id"), table_name="conversations"
    )
    op.drop_index(op.f("ix_conversations_owner_created_at_conversation_id"), table_name="conversations")
    with op.batch_alter_table("conversation_messages") as batch:
        batch.drop_constraint(op.f("uq_conversation_messages_conversation_id_request_id"), type_="unique")
        batch.drop_column("request_id")
        batch.drop_column("rolled_back_to")
        batch.drop_column("parent_version")
        batch.drop_column("on_behalf_of")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("tenant")
        batch.drop_column("on_behalf_of")
