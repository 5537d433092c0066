"""AuditService: paged, filtered reads of the audit trail and chain verification (served by the planner)."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh._errors import InvalidArgumentError, ResourceExhaustedError
from agentmesh.audit._verify import ChainVerification, verify_chain
from agentmesh.storage import AuditRecord
from agentmesh.v1 import audit_pb2, audit_pb2_grpc

__all__ = ["AuditServicer", "record_to_proto"]

_DEFAULT_PAGE = 100
_MAX_PAGE = 1_000
_MAX_SEQUENCE = 2**63 - 1


def _timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def record_to_proto(record: AuditRecord) -> audit_pb2.AuditRecord:
    """The stored record as the contract's ``AuditRecord``."""
    detail = struct_pb2.Struct()
    detail.update(record.detail or {})
    return audit_pb2.AuditRecord(
        sequence=record.sequence,
        record_time=_timestamp(record.record_time),
        actor=record.actor,
        on_behalf_of=record.on_behalf_of,
        action=record.action,
        resource=record.resource,
        outcome=record.outcome,
        detail=detail,
        trace_id=record.trace_id,
        previous_hash=record.previous_hash,
        record_hash=record.record_hash,
        model_name=record.model_name,
        model_version=record.model_version,
    )


def _moment(stamp: timestamp_pb2.Timestamp, field: str) -> dt.datetime:
    """A filter's time; INVALID_ARGUMENT (not INTERNAL) for one outside what a Timestamp can be."""
    try:
        return stamp.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgumentError(f"{field} is outside 0001-01-01..9999-12-31", field=field) from None


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Reads the chain from the database the planner writes it to; appends never go through gRPC."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._verifying: dict[tuple[int, int], asyncio.Future[ChainVerification]] = {}

    async def ListAuditRecords(
        self,
        request: audit_pb2.ListAuditRecordsRequest,
        context: grpc.aio.ServicerContext[audit_pb2.ListAuditRecordsRequest, audit_pb2.ListAuditRecordsResponse],
    ) -> audit_pb2.ListAuditRecordsResponse:
        """One page of records in sequence order; the page token is the last sequence returned."""
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative", field="page_size")
        size = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        after = 0
        if request.page_token:
            try:
                after = int(request.page_token)
            except ValueError:
                after = -1
            if not 0 <= after <= _MAX_SEQUENCE:  # sequences are BIGINT: a bigger one failed in the query
                raise InvalidArgumentError("page_token is not one this service returned", field="page_token")
        query = select(AuditRecord).where(AuditRecord.sequence > after)
        for name, column, value in (
            ("actor", AuditRecord.actor, request.actor),
            ("resource", AuditRecord.resource, request.resource),
            ("action", AuditRecord.action, request.action),
            ("outcome", AuditRecord.outcome, request.outcome),
        ):
            if "\x00" in value:  # PostgreSQL refuses NUL even as a parameter (INTERNAL); nothing stored has one
                raise InvalidArgumentError(f"{name} must not contain NUL characters", field=name)
            if value:
                query = query.where(column == value)
        if request.HasField("start_time"):
            query = query.where(AuditRecord.record_time >= _moment(request.start_time, "start_time"))
        if request.HasField("end_time"):
            query = query.where(AuditRecord.record_time < _moment(request.end_time, "end_time"))
        async with self._engine.connect() as connection:
            connection = await connection.execution_options(sqlite_begin="DEFERRED")
            rows = (await connection.execute(query.order_by(AuditRecord.sequence).limit(size + 1))).all()
        records = [AuditRecord(**row._mapping) for row in rows[:size]]
        token = str(records[-1].sequence) if len(rows) > size else ""
        return audit_pb2.ListAuditRecordsResponse(
            records=[record_to_proto(r) for r in records], next_page_token=token
        )

    async def VerifyAuditChain(
        self,
        request: audit_pb2.VerifyAuditChainRequest,
        context: grpc.aio.ServicerContext[audit_pb2.VerifyAuditChainRequest, audit_pb2.VerifyAuditChainResponse],
    ) -> audit_pb2.VerifyAuditChainResponse:
        """Recompute the chain over the range asked and report the first broken record."""
        if request.from_sequence < 0 or request.to_sequence < 0:
            raise InvalidArgumentError("sequences must not be negative", field="from_sequence")
        # A verification reads and rehashes every record of its range (about a second per 20,000): callers asking
        # for the same range at once share one run, and a replica runs one range at a time, so repeated calls
        # cannot hold the planner's CPU.
        key = (request.from_sequence, request.to_sequence)
        running = self._verifying.get(key)
        if running is None:
            if self._verifying:
                raise ResourceExhaustedError(
                    "another range of the audit chain is being verified on this server; retry when it is done",
                    retry_after=1.0,
                    reason="VERIFICATION_RUNNING",
                )
            running = asyncio.ensure_future(
                verify_chain(self._engine, from_sequence=request.from_sequence, to_sequence=request.to_sequence)
            )
            self._verifying[key] = running
            running.add_done_callback(lambda _: self._verifying.pop(key, None))
        result = await asyncio.shield(running)  # one caller going away does not stop the others' answer
        return audit_pb2.VerifyAuditChainResponse(
            valid=result.valid,
            records_checked=result.records_checked,
            first_invalid_sequence=result.first_invalid_sequence,
            message=result.message,
            head_hash=result.head_hash,
        )
