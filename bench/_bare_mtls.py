"""The baseline most benchmarks divide by: a bare ``grpc.aio`` mTLS unary echo at 1 in flight.

No interceptors, no SPIFFE check, no telemetry: a ``grpc.aio`` server with the mesh's certificates and a
generic handler. ``bare_echo_server`` can carry extra raw-bytes handlers, so a bench can measure inside a
handler on the same real connection.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from agentmesh._settings import Settings
from agentmesh.security import add_port, channel_credentials

RawHandler = Callable[[bytes, Any], Awaitable[bytes]]
SERVICE = "bench.Bare"


async def _echo(request: bytes, context: Any) -> bytes:
    return request


@asynccontextmanager
async def bare_echo_server(
    settings: Settings, extra: dict[str, RawHandler] | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """Serve ``Echo`` (and ``extra``) over bare mTLS on a loopback port; yield a client channel to it."""
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    for name, handler in (extra or {}).items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(handler)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = add_port(server, "127.0.0.1:0", settings, "service", "bench-server")
    await server.start()
    try:
        credentials = channel_credentials(settings, "service", "planner")
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            yield channel
    finally:
        await server.stop(0)


def raw_call(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
    """A raw-bytes callable for one of the server's methods."""
    return channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)


async def echo_latencies(channel: grpc.aio.Channel, calls: int, warmup: int = 200) -> list[float]:
    """Seconds per ``Echo`` call at 1 in flight, after ``warmup`` calls (connection and code paths)."""
    call = raw_call(channel, "Echo")
    for _ in range(warmup):
        await call(b"x", timeout=5)
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        await call(b"x", timeout=5)
        latencies.append(time.perf_counter() - start)
    return latencies


async def bare_p50_us(settings: Settings, calls: int) -> float:
    """The baseline's median in microseconds."""
    async with bare_echo_server(settings) as channel:
        return statistics.median(await echo_latencies(channel, calls)) * 1e6
