"""Registry: agent_versions.card_proto, the card as serialized protobuf for fast replica start-up.

Revision ID: 0002_registry
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_registry"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("agent_versions") as batch:
        batch.add_column(sa.Column("card_proto", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("agent_versions") as batch:
        batch.drop_column("card_proto")
