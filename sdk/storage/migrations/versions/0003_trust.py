"""Trust: revoked identities and certificate serials (registry).

``revocations`` holds what the whole mesh refuses; ``agent_instances.registered_serial`` remembers which
certificate registered each instance, so revoking one certificate removes exactly its instances.

Revision ID: 0003_trust
Revises: 0002_registry
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_trust"
down_revision: str | None = "0002_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from agentmesh.storage so this revision never changes later.
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "revocations",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("subject_kind", sa.String(length=24), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("revoked_by", sa.String(length=512), server_default="", nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "subject_kind IN ('SPIFFE_ID', 'CERTIFICATE_SERIAL')", name=op.f("ck_revocations_subject_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocations")),
        sa.UniqueConstraint("subject_kind", "subject", name=op.f("uq_revocations_subject_kind_subject")),
    )
    with op.batch_alter_table("agent_instances") as batch:
        batch.add_column(sa.Column("registered_serial", sa.String(length=64), server_default="", nullable=False))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("agent_instances") as batch:
        batch.drop_column("registered_serial")
    op.drop_table("revocations")
