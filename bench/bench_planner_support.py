"""The support ticket end to end through the planner vs its critical path of agent calls, on PostgreSQL.

One command starts a throwaway PostgreSQL, the local Triton (CPU), and the mesh as child processes (registry,
planner and the six customer-service agents, exactly as ``agentmesh up`` runs them), then submits the shipped
example tickets one at a time (1 in flight) to the planner's TaskService over mTLS and, for each ticket:

  end to end       SubmitTask sent -> WatchTask reports the final state (this process's clock)
  critical path    from the ticket's own execution log: triage, then the longest of sentiment / kb_search / crm,
                   then every drafting round that ran (responder + quality_check), each the duration of its
                   succeeded attempt as the planner recorded it (start recorded before the call, end after)
  direct path      the same calls made directly, no planner: each recorded step input replayed to the same
                   agent in the same order (the three middle calls concurrently), as the planner's identity, with
                   fresh idempotency keys, right after the ticket (same load, same warm caches)

Target (issue 13): end to end <= critical path + 15 ms. The overhead is printed against both paths.

    .venv/bin/python bench/bench_planner_support.py [--rounds 2] [--tickets 0 (all)]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TRUST_DOMAIN = "agentmesh.bench"
MIDDLE = ("sentiment", "kb_search", "crm")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _ms(attempt: Any) -> float:
    return (attempt.end_time.ToDatetime() - attempt.start_time.ToDatetime()).total_seconds() * 1000


def critical_path(explanation: Any) -> tuple[float, list[list[str]]]:
    """Milliseconds of the chain of succeeded agent calls, and the steps on it (stage by stage)."""
    from agentmesh.v1 import task_pb2

    done = {a.step_id: a for a in explanation.attempts if a.state == task_pb2.STEP_STATE_SUCCEEDED}
    stages = [["triage"], [s for s in MIDDLE if s in done]]
    round_ = 1
    while f"responder_{round_}" in done:
        stages.append([f"responder_{round_}"])
        if f"quality_check_{round_}" in done:
            stages.append([f"quality_check_{round_}"])
        round_ += 1
    return sum(max(_ms(done[s]) for s in stage) for stage in stages if stage), stages


def gaps(explanation: Any, submitted: float, seen: float) -> dict[str, float]:
    """Where the time outside the agent calls went (ms, wall clock of this machine): submission to the first
    call's start, the waits between stages (each stage's last end to the next stage's first start), the last
    call's end to the task's final state, and that to this client seeing it."""
    _, stages = critical_path(explanation)
    done = {a.step_id: a for a in explanation.attempts if a.step_id in {s for stage in stages for s in stage}}
    done = {k: v for k, v in done.items() if v.end_time.seconds}

    def at(stamp: Any) -> float:
        return float(stamp.ToDatetime().replace(tzinfo=dt.UTC).timestamp())

    starts = [min(at(done[s].start_time) for s in stage) for stage in stages if stage]
    ends = [max(at(done[s].end_time) for s in stage) for stage in stages if stage]
    finished = at(explanation.task.update_time)
    return {
        "submit->first call": (starts[0] - submitted) * 1000,
        "between stages": sum(starts[i + 1] - ends[i] for i in range(len(starts) - 1)) * 1000,
        "last call->task done": (finished - ends[-1]) * 1000,
        "task done->client": (seen - finished) * 1000,
    }


async def _direct_path(explanation: Any, url: str, settings: Any, channels: dict[str, Any]) -> float:
    """The same calls straight to the same agents, stage by stage (concurrent within a stage), with the inputs
    the planner resolved (read from its plan_steps rows)."""
    import psycopg
    from google.protobuf import struct_pb2

    from agentmesh._channel import create_channel
    from agentmesh.v1 import agent_pb2, agent_pb2_grpc

    _, stages = critical_path(explanation)
    async with await psycopg.AsyncConnection.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT step_id, skill, input, agent_endpoint FROM plan_steps WHERE task_id = %s AND state = 'SUCCEEDED'",
                (explanation.task.task_id,),
            )
        ).fetchall()
    steps = {row[0]: row for row in rows}

    async def call(step_id: str) -> None:
        _, skill, step_input, endpoint = steps[step_id]
        if endpoint not in channels:
            channels[endpoint] = create_channel(endpoint, settings, kind="service", name="planner")
        stub = agent_pb2_grpc.AgentServiceStub(channels[endpoint])
        request = agent_pb2.InvokeRequest(
            skill=skill, task_id=explanation.task.task_id, step_id=step_id, idempotency_key=uuid.uuid4().hex
        )
        struct = struct_pb2.Struct()
        struct.update(step_input or {})
        request.input.CopyFrom(struct)
        await stub.Invoke(request, timeout=60)

    started = time.perf_counter()
    for stage in stages:
        await asyncio.gather(*(call(s) for s in stage))
    return (time.perf_counter() - started) * 1000


async def _run_ticket(stub: Any, ticket: Any, n: int) -> tuple[str, float, float, float]:
    from agentmesh.v1 import task_pb2

    request = task_pb2.SubmitTaskRequest(
        goal=f"Answer support ticket {ticket.id}", playbook="support", request_id=f"bench-{n}-{uuid.uuid4().hex[:8]}"
    )
    request.input.update(
        {"ticket": {"id": ticket.id, "email": ticket.email, "subject": ticket.subject, "text": ticket.text}}
    )
    final = {task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED}
    submitted, started = time.time(), time.perf_counter()
    task = (await stub.SubmitTask(request, timeout=60)).task
    if task.state not in final:
        async for event in stub.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id), timeout=120):
            if event.task.state in final:
                task = event.task
                break
    took, seen = (time.perf_counter() - started) * 1000, time.time()
    if task.state != task_pb2.TASK_STATE_SUCCEEDED:
        raise SystemExit(f"ticket {ticket.id} ended {task_pb2.TaskState.Name(task.state)}: {task.error}")
    return task.task_id, took, submitted, seen


async def run(args: argparse.Namespace, url: str, home: Path, triton_url: str) -> list[str]:
    from agentmesh._channel import create_channel
    from agentmesh._settings import Settings
    from agentmesh.agents.examples import load_tickets
    from agentmesh.cli._mesh import LocalMesh
    from agentmesh.cli._up import AGENT_MODULES
    from agentmesh.inference import free_port
    from agentmesh.v1 import task_pb2, task_pb2_grpc

    ports = {"registry": free_port(), "planner": free_port(), "gateway": free_port()}
    os.environ.update(
        {
            "AGENTMESH_HOME": str(home),
            "AGENTMESH_TRUST_DOMAIN": TRUST_DOMAIN,
            "AGENTMESH_DATABASE_URL": url,
            "AGENTMESH_TRITON_URL": triton_url,
            "AGENTMESH_REGISTRY_PORT": str(ports["registry"]),
            "AGENTMESH_PLANNER_PORT": str(ports["planner"]),
            "AGENTMESH_GATEWAY_PORT": str(ports["gateway"]),
            "AGENTMESH_CONSOLE_PORT": "-1",
            "AGENTMESH_LOG_LEVEL": "WARNING",
            "AGENTMESH_TRACE_SAMPLING": "0",
        }
    )
    settings = Settings.from_env()
    mesh = LocalMesh(agents=list(AGENT_MODULES), settings=settings, services=("registry", "planner"))
    report: list[str] = []
    load_before = os.getloadavg()
    try:
        await mesh._start(asyncio.Event())
        settings = mesh.settings
        tickets = load_tickets()
        if args.tickets:
            tickets = tickets[: args.tickets]
        channels: dict[str, Any] = {}
        rows: list[tuple[str, float, float, float]] = []
        spent: list[dict[str, float]] = []
        async with create_channel(settings.planner_address, settings, kind="client", name="ops") as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            for n, ticket in enumerate(tickets[:2]):  # warm: Triton's first calls, channels, discovery, caches
                await _run_ticket(stub, ticket, -1 - n)
            for r in range(args.rounds):
                for n, ticket in enumerate(tickets):
                    task_id, e2e, submitted, seen = await _run_ticket(stub, ticket, r * 1000 + n)
                    explanation = (
                        await stub.ExplainTask(task_pb2.ExplainTaskRequest(task_id=task_id), timeout=30)
                    ).explanation
                    path, _ = critical_path(explanation)
                    direct = await _direct_path(explanation, url, settings, channels)
                    rows.append((ticket.id, e2e, path, direct))
                    spent.append(gaps(explanation, submitted, seen))
        for endpoint_channel in channels.values():
            await endpoint_channel.close()
    finally:
        await mesh.stop()
    load_after = os.getloadavg()
    over_path = [e - p for _, e, p, _ in rows]
    over_direct = [e - d for _, e, _, d in rows]
    held = sum(1 for x in over_path if x <= 15.0)
    report.append(
        f"{len(rows)} tickets at 1 in flight ({args.rounds} rounds of {len(rows) // max(1, args.rounds)}), "
        f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after"
    )
    report.append(
        f"end to end p50 {_pct([e for _, e, _, _ in rows], 0.5):.1f} ms p90 {_pct([e for _, e, _, _ in rows], 0.9):.1f} ms; "
        f"critical path (recorded attempts) p50 {_pct([p for _, _, p, _ in rows], 0.5):.1f} ms; "
        f"direct calls p50 {_pct([d for _, _, _, d in rows], 0.5):.1f} ms"
    )
    report.append(
        f"end to end minus critical path: p50 {_pct(over_path, 0.5):.1f} ms p90 {_pct(over_path, 0.9):.1f} ms "
        f"max {max(over_path):.1f} ms; within +15 ms: {held} of {len(rows)} tickets"
    )
    report.append(
        f"end to end minus direct calls: p50 {_pct(over_direct, 0.5):.1f} ms p90 {_pct(over_direct, 0.9):.1f} ms; "
        f"mean {statistics.mean(over_direct):.1f} ms"
    )
    report.append(
        "outside the calls, p50: "
        + ", ".join(f"{name} {_pct([g[name] for g in spent], 0.5):.1f} ms" for name in spent[0])
    )
    if args.verbose:
        report += [f"  {t}: e2e {e:.1f} path {p:.1f} direct {d:.1f}" for t, e, p, d in rows]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="times every ticket is run")
    parser.add_argument("--tickets", type=int, default=0, help="only the first N example tickets (0: all)")
    parser.add_argument("--verbose", action="store_true", help="one line per ticket")
    args = parser.parse_args()

    from agentmesh._settings import Settings
    from agentmesh.inference import LocalTriton
    from agentmesh.storage import upgrade
    from tests.fixtures.postgres import _throwaway_server

    models_home = Settings.from_env().home.resolve()  # the cached MiniLM export (as the tests use)
    with _throwaway_server() as server, tempfile.TemporaryDirectory(prefix="bench-support-") as tmp:
        server.execute('CREATE DATABASE "bench_support"')
        url = server.url("bench_support")
        upgrade(url)
        home = Path(tmp)
        os.chmod(home, 0o755)

        async def go() -> list[str]:
            triton = LocalTriton(home=models_home, log_file=home / "tritonserver.log")
            await triton.start()
            try:
                return await run(args, url, home, triton.grpc_url)
            finally:
                await triton.stop()

        report = asyncio.run(go())
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
