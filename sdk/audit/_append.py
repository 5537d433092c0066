"""Appending to the audit chain: inside a caller's transaction, or through :class:`AuditLog` (group commit).

The chain has one head. An appender takes the chain lock inside its transaction (PostgreSQL:
``pg_advisory_xact_lock``, released at commit or rollback; SQLite: the write lock every transaction takes
with ``BEGIN IMMEDIATE``), reads the head, and inserts the next records linked to it. Appenders in other
processes (planner replicas, the gateway) wait for the lock instead of forking the chain.

In a psycopg pipeline (:func:`queue_chained`: the planner's step ends, :class:`AuditLog` on PostgreSQL) the
database does the linking: each record's statement reads the head after the lock and hashes the canonical
encoding Python cut around the two members it fills in, so the lock is held only from where it is queued to the
commit, and nothing waits on a read of the head. Either way the records and their hashes are the same.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from agentmesh._group_commit import GroupCommit
from agentmesh.audit._chain import GENESIS_HASH, canonical_parts, json_safe, record_hash
from agentmesh.audit._redact import redact, redact_json
from agentmesh.storage import (
    AuditRecord,
    async_session_factory,
    batched_pipeline,
    fit_text,
    psycopg_connection,
    queue_begin,
    queue_commit,
    utcnow,
    write,
)

__all__ = [
    "AUDIT_INSERT",
    "CHAIN_LOCK_KEY",
    "AuditEntry",
    "AuditLog",
    "append_audit",
    "chain_rows",
    "queue_chained",
]

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the audit chain (ASCII "audit").
CHAIN_LOCK_KEY = 0x6175646974
# Widths of the audit_records columns. PostgreSQL refuses a longer value or a NUL character, and one refused row
# fails every record group-committed with it (a caller chooses e.g. the task id recorded as the resource), so
# values are fitted before they are hashed: NUL becomes U+FFFD, an over-long value is cut and ends in "…".
_WIDTHS = {
    "actor": 512,
    "on_behalf_of": 512,
    "action": 256,
    "resource": 512,
    "outcome": 32,
    "trace_id": 32,
    "model_name": 128,
    "model_version": 64,
}
# The insert of chained rows: nothing is fetched back (every column is given), so it can go in a pipeline.
AUDIT_INSERT = insert(AuditRecord).inline()


@dataclass(frozen=True)
class AuditEntry:
    """What happened, as the caller knows it; time, sequence and hashes are added when it is appended.

    ``action`` is a full gRPC method (``/agentmesh.v1.TaskService/SubmitTask``) or a domain action
    (``step.attempt``, ``step.approve``); ``resource`` e.g. ``tasks/<id>/steps/<step_id>``; ``outcome``
    ``"OK"`` or a gRPC status name. Every string and ``detail`` are PII-redacted before they are stored.
    """

    action: str
    resource: str = ""
    outcome: str = "OK"
    actor: str = ""
    on_behalf_of: str = ""
    trace_id: str = ""
    model_name: str = ""
    model_version: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


async def append_audit(
    target: AsyncSession | AsyncConnection, entries: Sequence[AuditEntry]
) -> list[AuditRecord]:
    """Append ``entries`` to the chain in the transaction of ``target`` (an ORM session or a Core
    connection); they become visible when that transaction commits.

    Takes the chain lock, which is held until the caller's transaction ends: keep that transaction short.
    Returns the records as stored (sequence, time and hashes filled in; not attached to any session).
    """
    if not entries:
        return []
    connection = await target.connection() if isinstance(target, AsyncSession) else target
    if connection.dialect.name == "postgresql":  # the lock and the linked records in one round trip
        driver = await psycopg_connection(connection)
        async with batched_pipeline(driver):
            records = await queue_chained(driver, entries)
        return await records()
    # SQLite: the write lock every transaction takes (BEGIN IMMEDIATE) is the chain lock.
    rows = chain_rows(entries, (await connection.execute(_HEAD)).first())
    await write(connection, AUDIT_INSERT, rows)
    return [AuditRecord(**row) for row in rows]


def chain_rows(entries: Sequence[AuditEntry], head: Any) -> list[dict[str, Any]]:
    """The rows that append ``entries`` after ``head`` ((sequence, hash) of the last record, or None): redacted,
    numbered, timed and hash-linked. Only valid while the caller holds the chain lock it read ``head`` under."""
    sequence, previous = (head[0], head[1]) if head is not None else (0, GENESIS_HASH)
    moment = utcnow()
    rows = []
    for entry in entries:
        sequence += 1
        fields = {**_stored(entry, moment), "sequence": sequence, "previous_hash": previous}
        previous = record_hash(**fields)
        rows.append({**fields, "record_hash": previous})
    return rows


def _stored(entry: AuditEntry, moment: dt.datetime) -> dict[str, Any]:
    """A record's fields as stored and hashed, but for its place in the chain (sequence, previous hash)."""
    return {
        "record_time": moment,
        "actor": _fit(entry.actor, "actor"),
        "on_behalf_of": _fit(redact(entry.on_behalf_of), "on_behalf_of"),
        "action": _fit(entry.action, "action"),
        "resource": _fit(redact(entry.resource), "resource"),
        "outcome": _fit(entry.outcome, "outcome"),
        "detail": json_safe(redact_json(dict(entry.detail))),
        "trace_id": _fit(entry.trace_id, "trace_id"),
        "model_name": _fit(entry.model_name, "model_name"),
        "model_version": _fit(entry.model_version, "model_version"),
    }


async def queue_chained(driver: Any, entries: Sequence[AuditEntry]) -> Callable[[], Awaitable[list[AuditRecord]]]:
    """Queue, in the caller's psycopg pipeline (PostgreSQL), the chain lock and one statement per entry that
    appends it after the head it reads then: the database links and hashes each record (see
    :func:`~agentmesh.audit._chain.canonical_parts`), so nothing waits for a read of the head and the lock is held
    only from this point of the transaction to its end. Returns what to await, once the pipeline has synced, for
    the records as stored."""
    await driver.execute(_PG_LOCK, (CHAIN_LOCK_KEY,))
    # When the records were made, not when the lock was granted: under contention a record's time can be a few
    # milliseconds before its predecessor's (nothing reads order from time: the sequence is the order).
    moment = utcnow()
    stored = [_stored(entry, moment) for entry in entries]
    cursors = []
    for fields in stored:
        before, between, after = canonical_parts(**fields)
        cursors.append(await driver.execute(_PG_APPEND, {
            **fields, "detail": Jsonb(fields["detail"]), "before": before, "between": between, "after": after,
            "genesis": GENESIS_HASH,
        }))

    async def records() -> list[AuditRecord]:
        placed = [await cursor.fetchone() for cursor in cursors]
        return [AuditRecord(**fields, sequence=row[0], previous_hash=row[1], record_hash=row[2])
                for fields, row in zip(stored, placed, strict=True)]

    return records


# The head is read by the appending statement itself, after the chain lock is granted (READ COMMITTED: a fresh
# snapshot per statement, so it sees the last holder's commit and this transaction's own earlier appends).
_PG_APPEND = (
    "INSERT INTO audit_records (sequence, record_time, actor, on_behalf_of, action, resource, outcome, detail, "
    "trace_id, model_name, model_version, previous_hash, record_hash) "
    "SELECT head.sequence + 1, %(record_time)s, %(actor)s, %(on_behalf_of)s, %(action)s, %(resource)s, %(outcome)s, "
    "%(detail)s, %(trace_id)s, %(model_name)s, %(model_version)s, head.record_hash, "
    "encode(sha256(%(before)s::bytea || convert_to(head.record_hash, 'UTF8') || %(between)s::bytea "
    "|| convert_to((head.sequence + 1)::text, 'UTF8') || %(after)s::bytea), 'hex') "
    # The last record by the primary key's index (one row read), or the genesis when the chain is empty.
    "FROM (SELECT coalesce(last.sequence, 0) AS sequence, coalesce(last.record_hash, %(genesis)s) AS record_hash "
    "FROM (SELECT 1) AS one LEFT JOIN LATERAL "
    "(SELECT sequence, record_hash FROM audit_records ORDER BY sequence DESC LIMIT 1) AS last ON true) AS head "
    "RETURNING sequence, previous_hash, record_hash"
)


def _fit(text: str, column: str) -> str:
    """``text`` as the column ``column`` can store it (see :data:`_WIDTHS`)."""
    return fit_text(text, _WIDTHS[column])


_HEAD = select(AuditRecord.sequence, AuditRecord.record_hash).order_by(AuditRecord.sequence.desc()).limit(1)
_PG_LOCK = "SELECT pg_advisory_xact_lock(%s)"


class AuditLog:
    """Appends in transactions of its own, committing concurrent appends together (group commit).

    ``await log.append(entry)`` returns once the record is committed. While one transaction runs, new
    entries queue; the next transaction takes all of them, so many concurrent callers cost one chain lock
    and one commit. Use it where no transaction of your own is open (the gateway); inside one, call
    :func:`append_audit`.
    """

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 500) -> None:
        self._sessions: async_sessionmaker[AsyncSession] = async_session_factory(engine)
        # PostgreSQL: an autocommit connection, so BEGIN and COMMIT go out with the statements: one round trip a
        # batch (see queue_chained), instead of psycopg's own BEGIN, the head's read, the insert and the commit.
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else None
        # A failed transaction fails every append in it (no one-by-one retry); max_batch counts records.
        self._batches: GroupCommit[Sequence[AuditEntry], list[AuditRecord]] = GroupCommit(
            self._write, max_batch=max_batch, weight=len, alone_on_failure=False, name="audit-writer"
        )

    async def append(self, *entries: AuditEntry) -> list[AuditRecord]:
        """Append ``entries`` and wait until they are committed; returns them as stored."""
        return await self._batches.submit(entries)

    async def _write(self, batch: Sequence[Sequence[AuditEntry]]) -> list[list[AuditRecord]]:
        entries = [entry for entries in batch for entry in entries]
        if self._single is not None:
            records = await self._write_pipelined(entries)
        else:
            async with self._sessions.begin() as session:
                records = await append_audit(session, entries)
        results, start = [], 0
        for asked in batch:
            results.append(records[start : start + len(asked)])
            start += len(asked)
        return results

    async def _write_pipelined(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        assert self._single is not None
        async with self._single.connect() as conn:
            driver = await psycopg_connection(conn)
            try:
                async with batched_pipeline(driver):
                    await queue_begin(driver)
                    records = await queue_chained(driver, entries)
                    await queue_commit(driver)
                return await records()
            except BaseException:
                await conn.invalidate()  # a transaction left open or aborted is not handed to the next append
                raise

    async def close(self) -> None:
        """Wait for queued appends to be written."""
        await self._batches.close()
