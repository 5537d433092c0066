"""The audit trail: append-only, hash-chained records."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Index, String, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from agentmesh.storage._base import Base
from agentmesh.storage._types import JSONDoc, UTCDateTime

__all__ = ["AuditRecord"]

_IDENTITY = 512


class AuditRecord(Base):
    """``audit_records``: one entry of the hash chain; rows are inserted once and never changed.

    ``sequence`` is NOT autoincrement: the writer reads the head (highest sequence and its
    ``record_hash``) and inserts ``sequence = head + 1`` with ``previous_hash = head.record_hash`` in one
    transaction, so the chain has no gaps and two writers racing for the same sequence collide on the
    primary key instead of forking the chain (retry on IntegrityError). Columns: ``sequence``;
    ``record_time``; ``actor`` (caller's SPIFFE id); ``on_behalf_of``; ``action``; ``resource``;
    ``outcome`` ("OK" or a gRPC status name); ``detail`` (redacted JSON); ``trace_id``;
    ``previous_hash`` and ``record_hash`` (hex SHA-256; ``record_hash`` unique).
    """

    __tablename__ = "audit_records"
    __table_args__ = (
        UniqueConstraint("record_hash"),
        Index(None, "actor", "sequence"),
        Index(None, "resource", "sequence"),
        Index(None, "record_time"),
    )

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    record_time: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    actor: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    on_behalf_of: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    action: Mapped[str] = mapped_column(String(256))
    resource: Mapped[str] = mapped_column(String(512), default="", server_default="")
    outcome: Mapped[str] = mapped_column(String(32), default="OK", server_default="OK")
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    trace_id: Mapped[str] = mapped_column(String(32), default="", server_default="")
    previous_hash: Mapped[str] = mapped_column(String(64), default="", server_default="")
    record_hash: Mapped[str] = mapped_column(String(64))
