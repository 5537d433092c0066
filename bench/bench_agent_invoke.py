"""What the Agent SDK adds to a call: ``AgentService.Invoke`` of a no-op skill vs a bare grpc.aio mTLS unary.

The agent's ``Invoke`` overhead over a direct Triton call is one more mTLS hop plus the SDK (authz,
telemetry, input/output validation, Struct conversion, idempotency cache); a no-op skill measures exactly
that, so its p50 bounds the overhead. Each server runs in its own process (uvloop, as shipped); the client
runs in this process with 1 call in flight; rounds interleave the variants and the ratio is paired per round.

    .venv/bin/python bench/bench_agent_invoke.py [--rounds 5] [--calls 2000]

Variants:
  bare      grpc.aio server + mTLS returning the request's Struct (no interceptors): the hop alone
  invoke    AgentRuntime serving an echo skill (pydantic in/out), called as the planner, no idempotency key
  invoke-key  the same with a fresh idempotency key per call (cache insert on every call)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

VARIANTS = ("bare", "invoke", "invoke-key")
BARE_METHOD = "/bench.Echo/Call"


def _settings(home: Path) -> Any:
    from agentmesh._settings import Settings

    return Settings(home=home, trust_domain="agentmesh.bench", log_level="WARNING")


def _serve(variant: str, home: Path, port_out: Any) -> None:
    import uvloop

    uvloop.run(_serve_async(variant, home, port_out))


async def _serve_async(variant: str, home: Path, port_out: Any) -> None:
    import grpc
    from google.protobuf import struct_pb2

    from agentmesh.security import add_port

    settings = _settings(home)
    if variant == "bare":

        async def call(request: struct_pb2.Struct, context: Any) -> struct_pb2.Struct:
            return request

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo",
            {
                "Call": grpc.unary_unary_rpc_method_handler(
                    call,
                    request_deserializer=struct_pb2.Struct.FromString,
                    response_serializer=struct_pb2.Struct.SerializeToString,
                )
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = add_port(server, "127.0.0.1:0", settings, "agent", "bench")
        await server.start()
        port_out.put(port)
        await server.wait_for_termination()
        return
    from agentmesh.agent import AgentRuntime

    runtime = AgentRuntime(_make_agent_class()(settings), port=0, register=False)
    await runtime.start()
    port_out.put(runtime.port)
    await asyncio.Event().wait()


def _make_agent_class() -> Any:
    from pydantic import BaseModel

    from agentmesh.agent import Agent, AgentInfo, skill

    class Ticket(BaseModel):
        text: str
        priority: int = 0

    class Answer(BaseModel):
        text: str
        priority: int

    class BenchAgent(Agent):
        card = AgentInfo(name="bench", namespace="bench", version="1.0.0")

        @skill(description="Return the ticket unchanged")
        async def echo(self, ticket: Ticket) -> Answer:
            return Answer(text=ticket.text, priority=ticket.priority)

    return BenchAgent


async def _measure(variant: str, port: int, home: Path, calls: int) -> list[float]:
    from google.protobuf import struct_pb2

    from agentmesh._channel import create_channel
    from agentmesh.v1 import agent_pb2, agent_pb2_grpc

    settings = _settings(home)
    payload: dict[str, Any] = {"text": "My order never arrived and I want a refund", "priority": 2}
    latencies: list[float] = []
    async with create_channel(f"127.0.0.1:{port}", settings, kind="service", name="planner") as channel:
        if variant == "bare":
            method = channel.unary_unary(
                BARE_METHOD,
                request_serializer=struct_pb2.Struct.SerializeToString,
                response_deserializer=struct_pb2.Struct.FromString,
            )
            request = struct_pb2.Struct()
            request.update(payload)

            async def once() -> None:
                await method(request)
        else:
            stub = agent_pb2_grpc.AgentServiceStub(channel)

            async def once() -> None:
                invoke = agent_pb2.InvokeRequest(skill="echo", task_id="t", step_id="s")
                invoke.input.update(payload)
                if variant == "invoke-key":
                    invoke.idempotency_key = uuid.uuid4().hex
                await stub.Invoke(invoke)

        for _ in range(200):  # warm up: connection, caches, JIT-free but allocator-warm
            await once()
        for _ in range(calls):
            started = time.perf_counter()
            await once()
            latencies.append(time.perf_counter() - started)
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)

    import uvloop

    from agentmesh.security import CertificateAuthority

    home = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    ca = CertificateAuthority.init(home, "agentmesh.bench")
    for kind, name in (("agent", "bench"), ("service", "planner")):
        ca.issue(kind, name)

    context = mp.get_context("spawn")
    servers: dict[str, tuple[Any, int]] = {}
    for variant in ("bare", "invoke"):
        queue = context.Queue()
        process = context.Process(target=_serve, args=(variant, home, queue), daemon=True)
        process.start()
        servers[variant] = (process, queue.get(timeout=60))
    servers["invoke-key"] = servers["invoke"]

    p50: dict[str, list[float]] = {v: [] for v in VARIANTS}
    p99: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for round_ in range(args.rounds):
            order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
            for variant in order:
                latencies = uvloop.run(_measure(variant, servers[variant][1], home, args.calls))
                cuts = statistics.quantiles(latencies, n=100)
                p50[variant].append(statistics.median(latencies))
                p99[variant].append(cuts[98])
    finally:
        for process, _ in {id(p): (p, port) for p, port in servers.values()}.values():
            process.kill()

    print(f"1 call in flight, {args.calls} calls x {args.rounds} rounds, medians over rounds")
    print(f"{'variant':<12} {'p50 ms':>8} {'p99 ms':>8} {'p50 vs bare':>12} {'p50 - bare ms':>14}")
    for variant in VARIANTS:
        ratios = [a / b for a, b in zip(p50[variant], p50["bare"], strict=True)]
        deltas = [a - b for a, b in zip(p50[variant], p50["bare"], strict=True)]
        print(
            f"{variant:<12} {statistics.median(p50[variant]) * 1e3:8.3f} {statistics.median(p99[variant]) * 1e3:8.3f}"
            f" {statistics.median(ratios):11.2f}x {statistics.median(deltas) * 1e3:14.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
