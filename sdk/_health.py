"""Waiting on ``grpc.health.v1`` — how every launcher and test knows a server is ready (never a sleep)."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh._errors import DeadlineExceededError

__all__ = ["check_health", "health_status", "wait_until_serving"]


async def check_health(channel: grpc.aio.Channel, service: str = "", *, within: float = 1.0) -> str:
    """The health status name of ``service`` ("SERVING", "NOT_SERVING", ...), or "UNREACHABLE"."""
    return (await health_status(channel, service, within=within))[0]


async def health_status(channel: grpc.aio.Channel, service: str = "", *, within: float = 1.0) -> tuple[str, str]:
    """As :func:`check_health`, with gRPC's words for why when the status is "UNREACHABLE" (else "")."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=within)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN", ""
        return "UNREACHABLE", exc.details() or exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)), ""


async def wait_until_serving(
    channel: grpc.aio.Channel, service: str = "", *, within: float = 30.0, poll_interval: float = 0.05
) -> None:
    """Poll health until ``service`` is SERVING; raise DeadlineExceededError naming the last status."""
    deadline = time.monotonic() + within
    status = "UNREACHABLE"
    while time.monotonic() < deadline:
        status = await check_health(channel, service, within=max(0.2, min(1.0, deadline - time.monotonic())))
        if status == "SERVING":
            return
        await asyncio.sleep(poll_interval)
    raise DeadlineExceededError(f"not SERVING within {within:.0f}s (last health status: {status})")
