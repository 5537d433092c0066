"""The planner behind the gateway is down: outside callers get UNAVAILABLE with a retry hint, and nothing of
the mesh's inside (addresses, ports, identities, database errors) in the message or its details."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.v1 import audit_pb2, audit_pb2_grpc, task_pb2, task_pb2_grpc

pytestmark = pytest.mark.asyncio

_INSIDE = re.compile(r"127\.0\.0\.1|:\d{2,5}\b|service/planner|ipv4|connect|circuit")


def _details(exc: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    """The ErrorInfo metadata (as text) and the RetryInfo delay of a failed call."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    info, retry = "", None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            unpacked = error_details_pb2.ErrorInfo()
            detail.Unpack(unpacked)
            info = str(dict(unpacked.metadata))
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            unpacked_retry = error_details_pb2.RetryInfo()
            detail.Unpack(unpacked_retry)
            retry = unpacked_retry.retry_delay.ToNanoseconds() / 1e9
    return info, retry


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_a_stopped_planner_is_unavailable_with_a_retry_hint_and_no_internal_address(
    start_gateway: Any, recording_planner: Any, migrated_database_url: str
) -> None:
    gateway = await start_gateway(planner=recording_planner.address, database_url=migrated_database_url)
    async with gateway.channel() as channel:
        tasks = task_pb2_grpc.TaskServiceStub(channel)
        audit = audit_pb2_grpc.AuditServiceStub(channel)
        bearer = gateway.bearer()
        await tasks.GetTask(task_pb2.GetTaskRequest(task_id="t1"), metadata=bearer, timeout=10)
        await recording_planner.server.stop(grace=0.1)
        calls = {
            "GetTask": lambda: tasks.GetTask(task_pb2.GetTaskRequest(task_id="t1"), metadata=bearer, timeout=10),
            "SubmitTask": lambda: tasks.SubmitTask(
                task_pb2.SubmitTaskRequest(goal="help", playbook="support"), metadata=bearer, timeout=10
            ),
            "ListAuditRecords": lambda: audit.ListAuditRecords(
                audit_pb2.ListAuditRecordsRequest(), metadata=bearer, timeout=10
            ),
        }
        # The first calls find the planner gone; the later ones find the gateway's circuit to it open.
        for _ in range(3):
            for name, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call()
                exc = caught.value
                info, retry = _details(exc)
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, (name, exc.details())
                assert re.fullmatch(r"the planner is unavailable right now; retry in \d+s", exc.details() or ""), (
                    name,
                    exc.details(),
                )
                assert not _INSIDE.search(info), (name, info)
                assert retry is not None and retry >= 1, (name, retry)
