"""Gateway and audit benchmarks.

``--audit``: audit appends per second on a throwaway PostgreSQL (``tests.fixtures.postgres``) from P
concurrent appender processes (the planner replicas), each with K appends in flight, in two styles:

- ``own-tx``: one record per transaction via ``append_audit`` (how the planner appends with a step attempt);
- ``group``: ``AuditLog.append`` (the gateway's group commit: concurrent appends share one transaction).

The baseline in the same run is a plain one-row INSERT per transaction of the same columns into an unchained
table (no chain lock, no hash), at the same concurrency. The chain is verified after every run.

``--gateway``: p50 of SubmitTask-to-finished for a one-step task on a trivial agent skill (no model), through
the gateway (TLS + JWT) and directly to the planner (mTLS) in the same run, and the gateway's overhead ratio.

    .venv/bin/python bench/bench_gateway.py --audit --processes 1 2 4 --records 400 --in-flight 8
    .venv/bin/python bench/bench_gateway.py --gateway --tasks 300
    .venv/bin/python bench/bench_gateway.py --gateway --tasks 60 --watch   # WatchTask instead of GetTask polling

``--floor``: the least a durable gateway -> planner -> agent path can cost here (``bench/_floor_chain.py``): bare
servers, one process each, two commits, against one bare mTLS hop in the same run.

    .venv/bin/python bench/bench_gateway.py --floor --rounds 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_PLAIN_TABLE = """
CREATE TABLE IF NOT EXISTS bench_plain (
  id bigserial PRIMARY KEY, record_time timestamptz NOT NULL DEFAULT now(), actor varchar(512) NOT NULL,
  on_behalf_of varchar(512) NOT NULL DEFAULT '', action varchar(256) NOT NULL, resource varchar(512) NOT NULL,
  outcome varchar(32) NOT NULL, detail jsonb NOT NULL, trace_id varchar(32) NOT NULL DEFAULT '',
  previous_hash varchar(64) NOT NULL DEFAULT '', record_hash varchar(64) NOT NULL DEFAULT '')
"""


async def _worker(url: str, mode: str, records: int, in_flight: int, name: str) -> None:
    """One appender process: wait for "go" on stdin, append, print the seconds it took."""
    import sqlalchemy as sa

    from agentmesh.audit import AuditEntry, AuditLog, append_audit
    from agentmesh.storage import async_session_factory, create_async_engine

    engine = create_async_engine(url, pool_size=in_flight, max_overflow=0)
    sessions = async_session_factory(engine)
    log = AuditLog(engine)
    async with engine.connect() as connection:  # warm the pool's first connection
        await connection.execute(sa.text("SELECT 1"))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    detail = {"tenant": "acme", "step": "draft", "attempt": 1}

    def entry(i: int) -> AuditEntry:
        return AuditEntry("step.attempt", resource=f"tasks/{name}/{i}", actor=name, outcome="OK", detail=detail)

    async def one(i: int) -> None:
        if mode == "group":
            await log.append(entry(i))
        elif mode == "own-tx":
            async with sessions.begin() as session:
                await append_audit(session, [entry(i)])
        else:
            async with sessions.begin() as session:
                await session.execute(
                    sa.text(
                        "INSERT INTO bench_plain (actor, action, resource, outcome, detail) "
                        "VALUES (:a, 'step.attempt', :r, 'OK', CAST(:d AS jsonb))"
                    ),
                    {"a": name, "r": f"tasks/{name}/{i}", "d": json.dumps(detail)},
                )

    queue = iter(range(records))

    async def lane() -> None:
        for i in queue:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    print(f"{time.perf_counter() - started:.6f}", flush=True)
    await engine.dispose()


def _run_appenders(url: str, mode: str, processes: int, records: int, in_flight: int) -> float:
    """Records per second of ``processes`` appender processes started together."""
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, mode, str(records), str(in_flight), f"p{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    for worker in workers:
        assert worker.stdout is not None
        worker.stdout.readline()
        worker.wait(timeout=600)
    return processes * records / (time.perf_counter() - started)


def bench_audit(args: argparse.Namespace) -> None:
    from agentmesh.audit import verify_chain
    from agentmesh.storage import create_async_engine, upgrade
    from tests.fixtures.postgres import _throwaway_server

    with _throwaway_server() as server:
        server.execute('CREATE DATABASE "bench_audit"')
        url = server.url("bench_audit")
        upgrade(url)
        with server.connect("bench_audit") as connection:
            connection.execute(_PLAIN_TABLE)
        print("| appender processes | in flight each | plain INSERT/s | chained own-tx/s | ratio | chained group/s | ratio |")
        print("|---|---|---|---|---|---|---|")
        for processes in args.processes:
            plain = _run_appenders(url, "plain", processes, args.records, args.in_flight)
            own = _run_appenders(url, "own-tx", processes, args.records, args.in_flight)
            group = _run_appenders(url, "group", processes, args.records, args.in_flight)
            print(
                f"| {processes} | {args.in_flight} | {plain:,.0f} | {own:,.0f} | {own / plain:.2f}x | "
                f"{group:,.0f} | {group / plain:.2f}x |",
                flush=True,
            )

        async def verify() -> None:
            engine = create_async_engine(url)
            result = await verify_chain(engine)
            await engine.dispose()
            print(f"\nchain after all runs: valid={result.valid}, {result.records_checked:,} records")

        asyncio.run(verify())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audit", action="store_true", help="audit append rate on PostgreSQL")
    parser.add_argument("--gateway", action="store_true", help="gateway -> planner -> agent p50 vs direct")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--records", type=int, default=400, help="records per appender process")
    parser.add_argument("--in-flight", type=int, default=8, help="appends in flight per process")
    parser.add_argument("--tasks", type=int, default=300, help="tasks per path for --gateway")
    parser.add_argument("--watch", action="store_true", help="--gateway: follow each task with WatchTask, not polling")
    parser.add_argument("--floor", action="store_true",
                        help="the floor of a durable gateway -> planner -> agent path: bare servers, one process each")
    parser.add_argument("--rounds", type=int, default=1000, help="calls per path for --floor")
    parser.add_argument("--floor-role", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=5, metavar=("URL", "MODE", "RECORDS", "IN_FLIGHT", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_role:
        from bench._floor_chain import run_role

        run_role(args.floor_role)
        return 0
    if args.worker:
        url, mode, records, in_flight, name = args.worker
        asyncio.run(_worker(url, mode, int(records), int(in_flight), name))
        return 0
    if args.audit:
        bench_audit(args)
    if args.gateway:
        from bench._gateway_path import bench_gateway_path

        asyncio.run(bench_gateway_path(args.tasks, args.watch))
    if args.floor:
        from bench._floor_chain import bench_floor

        asyncio.run(bench_floor(args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
