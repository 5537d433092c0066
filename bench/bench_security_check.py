"""Cost of the per-call SPIFFE identity + authorization check, relative to a bare mTLS unary call.

Within one run: the p50 of bare ``grpc.aio`` mTLS unary calls at 1 in flight (the baseline), and, inside
a handler on a real mTLS connection, the mean cost of ``context.auth_context()`` alone and of the full
``ServerSecurity.check`` (auth context read, SPIFFE id, cached policy decision, contextvar) over many
repetitions. The check's share of a call is check / p50.

    .venv/bin/python bench/bench_security_check.py [--calls 2000] [--repeat 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from agentmesh._settings import Settings
from agentmesh.security import CertificateAuthority, add_port, channel_credentials, server_security

METHOD = "/agentmesh.v1.AgentService/Invoke"


async def _run(calls: int, repeat: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="bench-security-"))
    ca = CertificateAuthority.init(home, "agentmesh.local")
    ca.issue("service", "bench-server")
    ca.issue("service", "planner")
    settings = Settings(home=home)
    security = server_security(settings, "service", "bench-server")
    measured: dict[str, float] = {}

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def measure(request: bytes, context: Any) -> bytes:
        start = time.perf_counter()
        for _ in range(repeat):
            context.auth_context()
        measured["auth_context_us"] = (time.perf_counter() - start) / repeat * 1e6
        start = time.perf_counter()
        for _ in range(repeat):
            security.check(METHOD, context)
        measured["check_us"] = (time.perf_counter() - start) / repeat * 1e6
        return request

    server = grpc.aio.server()
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Measure": grpc.unary_unary_rpc_method_handler(measure),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Security", handlers)])
    port = add_port(server, "127.0.0.1:0", settings, "service", "bench-server")
    await server.start()
    try:
        credentials = channel_credentials(settings, "service", "planner")
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            echo_call = channel.unary_unary(
                "/bench.Security/Echo", request_serializer=None, response_deserializer=None
            )
            for _ in range(200):  # warm up the connection and the code paths
                await echo_call(b"x", timeout=5)
            latencies = []
            for _ in range(calls):
                start = time.perf_counter()
                await echo_call(b"x", timeout=5)
                latencies.append(time.perf_counter() - start)
            measure_call = channel.unary_unary(
                "/bench.Security/Measure", request_serializer=None, response_deserializer=None
            )
            await measure_call(b"x", timeout=60)
    finally:
        await server.stop(0)
    measured["bare_p50_us"] = statistics.median(latencies) * 1e6
    measured["check_share_of_call"] = measured["check_us"] / measured["bare_p50_us"]
    return measured


def main() -> None:
    """Print the figures as ``name value`` lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="bare unary calls for the baseline p50")
    parser.add_argument("--repeat", type=int, default=20000, help="check repetitions inside the handler")
    args = parser.parse_args()
    for name, value in asyncio.run(_run(args.calls, args.repeat)).items():
        print(f"{name} {value:.3f}")


if __name__ == "__main__":
    main()
