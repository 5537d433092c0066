"""Audit: model name and version columns; triggers refusing UPDATE and DELETE of audit records.

Revision ID: 0006_audit
Revises: 0005_conversations
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_audit"
down_revision: str | None = "0005_conversations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REFUSAL = "audit_records is append-only"

_PG_FUNCTION = f"""
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '{_REFUSAL}: % refused on record %', TG_OP, OLD.sequence
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""
_PG_TRIGGER = """
CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
FOR EACH ROW EXECUTE FUNCTION audit_records_append_only()
"""


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("model_name", sa.String(length=128), server_default="", nullable=False))
        batch.add_column(sa.Column("model_version", sa.String(length=64), server_default="", nullable=False))
    if op.get_context().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_records_no_{operation.lower()} BEFORE {operation} ON audit_records "
                f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}: {operation} refused'); END"
            )


def downgrade() -> None:
    """Revert this revision."""
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_records_append_only ON audit_records")
        op.execute("DROP FUNCTION audit_records_append_only()")
    else:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER audit_records_no_{operation}")
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("model_version")
        batch.drop_column("model_name")
