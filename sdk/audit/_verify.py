"""Verifying the audit chain: recompute every hash and link, and name the first record that is wrong."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.audit._chain import GENESIS_HASH, record_hash
from agentmesh.storage import AuditRecord

__all__ = ["ChainVerification", "verify_chain"]

_PAGE = 2_000


@dataclass(frozen=True)
class ChainVerification:
    """The result of :func:`verify_chain`; ``first_invalid_sequence`` is 0 when the chain is intact."""

    valid: bool
    records_checked: int
    first_invalid_sequence: int = 0
    message: str = ""
    head_hash: str = ""


def _recompute(record: AuditRecord) -> str:
    return record_hash(
        sequence=record.sequence,
        record_time=record.record_time,
        actor=record.actor,
        on_behalf_of=record.on_behalf_of,
        action=record.action,
        resource=record.resource,
        outcome=record.outcome,
        detail=record.detail or {},
        trace_id=record.trace_id,
        model_name=record.model_name,
        model_version=record.model_version,
        previous_hash=record.previous_hash,
    )


async def verify_chain(engine: AsyncEngine, *, from_sequence: int = 0, to_sequence: int = 0) -> ChainVerification:
    """Check records ``from_sequence``..``to_sequence`` (0: from the start / to the end), in pages.

    A record is broken when its stored hash is not the hash of its content (it was edited), when its
    ``previous_hash`` is not the stored hash of the record before it (a record was replaced), or when its
    sequence does not follow the previous one (a record was deleted).
    """
    start = max(from_sequence, 1)
    checked = 0
    async with engine.connect() as connection:
        connection = await connection.execution_options(sqlite_begin="DEFERRED")
        expected_previous = GENESIS_HASH
        if start > 1:
            before = await connection.scalar(
                select(AuditRecord.record_hash).where(AuditRecord.sequence == start - 1)
            )
            if before is None:
                return ChainVerification(False, 0, start, f"record {start - 1} before the range is missing")
            expected_previous = before
        expected_sequence = start
        head_hash = expected_previous
        while True:
            query = select(AuditRecord).where(AuditRecord.sequence >= expected_sequence)
            if to_sequence:
                query = query.where(AuditRecord.sequence <= to_sequence)
            rows = (
                await connection.execute(query.order_by(AuditRecord.sequence).limit(_PAGE))
            ).all()
            if not rows:
                break
            for row in rows:
                record = AuditRecord(**row._mapping)
                problem = ""
                if record.sequence != expected_sequence:
                    problem = f"records {expected_sequence}..{record.sequence - 1} are missing (deleted)"
                    record.sequence = expected_sequence
                elif record.previous_hash != expected_previous:
                    problem = (
                        f"record {record.sequence} does not link to record {record.sequence - 1} "
                        "(a record was replaced or rewritten)"
                    )
                elif _recompute(record) != record.record_hash:
                    problem = f"record {record.sequence} was altered: its content does not match its hash"
                if problem:
                    return ChainVerification(False, checked, record.sequence, problem, head_hash)
                checked += 1
                expected_previous = head_hash = record.record_hash
                expected_sequence = record.sequence + 1
    return ChainVerification(True, checked, 0, "", head_hash)
