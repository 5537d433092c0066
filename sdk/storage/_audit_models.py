"""The audit trail: append-only, hash-chained records."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Index, String, UniqueConstraint, event, func, text
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from agentmesh.storage._base import Base
from agentmesh.storage._types import JSONDoc, UTCDateTime

__all__ = ["AuditRecord"]

_IDENTITY = 512


class AuditRecord(Base):
    """``audit_records``: one entry of the hash chain; rows are inserted once and never changed.

    Written only by :func:`agentmesh.audit.append_audit`: inside the appending transaction it takes the
    chain lock (an advisory transaction lock on PostgreSQL; SQLite transactions begin IMMEDIATE), reads the
    head and inserts ``sequence = head + 1`` with ``previous_hash = head.record_hash``, so concurrent
    appenders (several planner replicas, the gateway) queue for the lock and never fork the chain; the
    primary key is the backstop. Columns: ``sequence``; ``record_time``; ``actor`` (caller's SPIFFE id);
    ``on_behalf_of``; ``action``; ``resource``; ``outcome`` ("OK" or a gRPC status name); ``detail``
    (redacted JSON); ``trace_id``; ``model_name`` and ``model_version`` (where a model was used);
    ``previous_hash`` and ``record_hash`` (hex SHA-256 of the RFC 8785 form, see agentmesh.audit).
    The ORM refuses to update or delete a row; on PostgreSQL and SQLite a trigger refuses it too.
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
    model_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    model_version: Mapped[str] = mapped_column(String(64), default="", server_default="")
    previous_hash: Mapped[str] = mapped_column(String(64), default="", server_default="")
    record_hash: Mapped[str] = mapped_column(String(64))


@event.listens_for(AuditRecord, "before_update")
@event.listens_for(AuditRecord, "before_delete")
def _refuse_change(_mapper: Mapper[AuditRecord], _connection: object, target: AuditRecord) -> None:
    from agentmesh._errors import FailedPreconditionError

    raise FailedPreconditionError(f"audit record {target.sequence} is append-only: it cannot be changed or deleted")
