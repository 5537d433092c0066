"""Conversations: request ids and rollback.

Revision ID: 0005_conversations
Revises: 0004_planner
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0005_conversations"
down_revision: str | None = "0004_planner"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""


def downgrade() -> None:
    """Revert this revision."""
