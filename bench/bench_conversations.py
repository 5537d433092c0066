"""``SendMessage`` through the planner's ConversationService vs a bare loop of the same write, on PostgreSQL.

Both servers run in their own process (uvloop) against one throwaway PostgreSQL 15 server (started as
``tests.fixtures.postgres`` does), and are called over mTLS by a client in this process:

  bare      grpc.aio server + mTLS (no interceptors) whose handler runs the write by hand: one transaction of
            ``UPDATE conversations SET version = version + 1 ... WHERE version = :expected RETURNING`` and the
            message ``INSERT`` (the floor: one mTLS hop plus the two statements)
  mesh      MeshServer (mTLS, SPIFFE authz, telemetry, error mapping) serving ConversationService as shipped:
            validation, role check, request-id lookup, the same conditional write, proto conversion

Each writer owns one conversation, so every write succeeds (contention is the integration tests' subject).
Rounds interleave the variants; ratios are paired per round and the median reported.

    .venv/bin/python bench/bench_conversations.py [--rounds 3] [--calls 1500] [--inflight 16]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures.postgres starts PostgreSQL

VARIANTS = ("bare", "mesh")
BARE_METHOD = "/bench.Conversations/SendMessage"


def _settings(home: Path, url: str = "") -> Any:
    from agentmesh._settings import Settings

    return Settings(home=home, trust_domain="agentmesh.bench", log_level="WARNING", database_url=url)


def _serve(variant: str, home: Path, url: str, port_out: Any) -> None:
    import uvloop

    uvloop.run(_serve_async(variant, home, url, port_out))


async def _serve_async(variant: str, home: Path, url: str, port_out: Any) -> None:
    import grpc
    import sqlalchemy as sa

    from agentmesh._server import MeshServer, bind
    from agentmesh.security import add_port
    from agentmesh.services.planner.conversation_servicer import ConversationServicer
    from agentmesh.services.planner.conversations import Conversations
    from agentmesh.services.planner.conversations_store import ConversationStore
    from agentmesh.storage import create_async_engine, utcnow
    from agentmesh.v1 import conversation_pb2, conversation_pb2_grpc

    settings = _settings(home, url)
    engine = create_async_engine(url, pool_size=20)
    if variant == "mesh":
        conversations = Conversations(ConversationStore(engine), trust_domain=settings.trust_domain)
        server = MeshServer(
            name="planner",
            settings=settings,
            port=0,
            services=[
                bind(
                    ConversationServicer(conversations),
                    conversation_pb2_grpc.add_ConversationServiceServicer_to_server,
                    "agentmesh.v1.ConversationService",
                )
            ],
        )
        await server.start()
        port_out.put(server.port)
        await asyncio.Event().wait()
        return

    bump = sa.text(
        "UPDATE conversations SET version = version + 1, updated_at = :now "
        "WHERE conversation_id = :id AND version = :expected RETURNING version"
    )
    insert = sa.text(
        "INSERT INTO conversation_messages (message_id, conversation_id, version, parent_version, role, author, "
        "on_behalf_of, text, hidden, created_at) VALUES (:mid, :id, :version, :parent, 'USER', :author, '', :text, "
        "false, :now)"
    )

    async def send(
        request: conversation_pb2.SendMessageRequest, context: Any
    ) -> conversation_pb2.SendMessageResponse:
        now = utcnow()
        async with engine.begin() as conn:
            version = (
                await conn.execute(
                    bump, {"now": now, "id": request.conversation_id, "expected": request.expected_version}
                )
            ).scalar_one()
            await conn.execute(
                insert,
                {"mid": uuid.uuid4().hex, "id": request.conversation_id, "version": version, "parent": version - 1,
                 "author": "spiffe://agentmesh.bench/client/bench", "text": request.text, "now": now},
            )
        return conversation_pb2.SendMessageResponse(
            conversation=conversation_pb2.Conversation(conversation_id=request.conversation_id, version=version)
        )

    handler = grpc.method_handlers_generic_handler(
        "bench.Conversations",
        {
            "SendMessage": grpc.unary_unary_rpc_method_handler(
                send,
                request_deserializer=conversation_pb2.SendMessageRequest.FromString,
                response_serializer=conversation_pb2.SendMessageResponse.SerializeToString,
            )
        },
    )
    bare = grpc.aio.server()
    bare.add_generic_rpc_handlers((handler,))
    port = add_port(bare, "127.0.0.1:0", settings, "service", "planner")
    await bare.start()
    port_out.put(port)
    await bare.wait_for_termination()


async def _create_conversations(url: str, count: int) -> list[str]:
    import sqlalchemy as sa

    from agentmesh.storage import Conversation, create_async_engine, utcnow

    engine = create_async_engine(url)
    ids = [uuid.uuid4().hex for _ in range(count)]
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(Conversation.__table__),
            [{"conversation_id": i, "title": "bench", "version": 0, "labels": {}, "owner": "bench",
              "created_at": utcnow(), "updated_at": utcnow()} for i in ids],
        )
    await engine.dispose()
    return ids


async def _measure(variant: str, port: int, home: Path, url: str, calls: int, inflight: int) -> tuple[list[float], float]:
    """Latencies (s) of ``calls`` writes split over ``inflight`` writers, and the writes per second."""
    from agentmesh._channel import create_channel
    from agentmesh.v1 import conversation_pb2, conversation_pb2_grpc

    settings = _settings(home)
    ids = await _create_conversations(url, inflight)
    latencies: list[float] = []
    async with create_channel(f"127.0.0.1:{port}", settings, kind="client", name="bench") as channel:
        if variant == "bare":
            send = channel.unary_unary(
                BARE_METHOD,
                request_serializer=conversation_pb2.SendMessageRequest.SerializeToString,
                response_deserializer=conversation_pb2.SendMessageResponse.FromString,
            )
        else:
            send = conversation_pb2_grpc.ConversationServiceStub(channel).SendMessage

        async def writer(conversation_id: str, count: int) -> None:
            for version in range(count):
                request = conversation_pb2.SendMessageRequest(
                    conversation_id=conversation_id, expected_version=version, text=f"message {version}"
                )
                started = time.perf_counter()
                await send(request, timeout=10)
                latencies.append(time.perf_counter() - started)

        await writer(ids[0], 50)  # warm-up (connections, caches)
        latencies.clear()
        ids[0] = (await _create_conversations(url, 1))[0]
        per_writer = calls // inflight
        started = time.perf_counter()
        await asyncio.gather(*(writer(i, per_writer) for i in ids))
        elapsed = time.perf_counter() - started
    return latencies, len(latencies) / elapsed


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()

    from agentmesh.security import CertificateAuthority
    from agentmesh.storage import upgrade
    from tests.fixtures.postgres import _throwaway_server

    with _throwaway_server() as pg, tempfile.TemporaryDirectory(prefix="bench-conversations-") as tmp:
        home = Path(tmp)
        ca = CertificateAuthority.init(home, "agentmesh.bench")
        ca.issue("service", "planner")
        ca.issue("client", "bench")
        pg.execute('CREATE DATABASE "bench"')
        url = pg.url("bench")
        upgrade(url)
        context = mp.get_context("spawn")
        ports: dict[str, int] = {}
        processes = []
        for variant in VARIANTS:
            queue = context.Queue()
            process = context.Process(target=_serve, args=(variant, home, url, queue), daemon=True)
            process.start()
            processes.append(process)
            ports[variant] = queue.get(timeout=60)
        try:
            for inflight in args.inflight:
                calls = args.calls if inflight > 1 else args.calls // 2
                p50: dict[str, list[float]] = {v: [] for v in VARIANTS}
                p99: dict[str, list[float]] = {v: [] for v in VARIANTS}
                rate: dict[str, list[float]] = {v: [] for v in VARIANTS}
                for round_ in range(args.rounds):
                    order = VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS))
                    for variant in order:
                        latencies, per_second = asyncio.run(
                            _measure(variant, ports[variant], home, url, calls, inflight)
                        )
                        p50[variant].append(_pct(latencies, 0.50) * 1000)
                        p99[variant].append(_pct(latencies, 0.99) * 1000)
                        rate[variant].append(per_second)
                print(f"\n{inflight} in flight, {args.rounds} rounds of {calls} writes (medians)")
                print(f"{'variant':<8} {'p50 ms':>8} {'p99 ms':>8} {'writes/s':>9} {'p50 vs bare':>12} {'rate vs bare':>13}")
                for variant in VARIANTS:
                    p50_ratio = statistics.median(a / b for a, b in zip(p50[variant], p50["bare"], strict=True))
                    rate_ratio = statistics.median(a / b for a, b in zip(rate[variant], rate["bare"], strict=True))
                    print(
                        f"{variant:<8} {statistics.median(p50[variant]):>8.2f} {statistics.median(p99[variant]):>8.2f} "
                        f"{statistics.median(rate[variant]):>9.0f} {p50_ratio:>11.2f}x {rate_ratio:>12.2f}x"
                    )
        finally:
            for process in processes:
                process.terminate()
                process.join(5)


if __name__ == "__main__":
    main()
