"""Audit: a trigger refusing TRUNCATE of audit records on PostgreSQL.

TRUNCATE fires no row trigger, so 0006's UPDATE/DELETE trigger let it empty the table, after which the
chain verified as valid (zero records) and new appends restarted at sequence 1. SQLite has no TRUNCATE
(its unqualified DELETE runs the row trigger once the table has one).

Revision ID: 0007_audit_truncate
Revises: 0006_audit
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_audit_truncate"
down_revision: str | None = "0006_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG_FUNCTION = """
CREATE FUNCTION audit_records_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_records is append-only: TRUNCATE refused'
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""
_PG_TRIGGER = """
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
FOR EACH STATEMENT EXECUTE FUNCTION audit_records_no_truncate()
"""


def upgrade() -> None:
    """Apply this revision."""
    if op.get_context().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)


def downgrade() -> None:
    """Revert this revision."""
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_records_no_truncate ON audit_records")
        op.execute("DROP FUNCTION audit_records_no_truncate()")
