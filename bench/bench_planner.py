"""Durable steps through the planner vs a bare loop of SKIP LOCKED claim + mTLS call + record, on PostgreSQL.

Everything runs on this machine: a throwaway PostgreSQL, the registry, one planner and a trivial agent, each
in its own process (uvloop); this process submits and measures. The baseline is measured in the same run,
against the same agent and database server, at the same number of calls in flight.

    .venv/bin/python bench/bench_planner.py [--tasks 200] [--width 10] [--chain 30] [--skip-crash] [--floor]

Figures:
  throughput   tasks of ``width`` independent trivial steps, all submitted at once: steps/s, attempt p50/p99
               (claim -> record, from the execution log), vs the bare loop at the planner's in-flight bound
  overhead     one task of ``chain`` sequential trivial steps at 1 in flight: wall time per step (submission to
               the task's recorded end, over the chain's steps) minus the p50 of a bare mTLS Invoke of the same skill (the
               agent call itself); and per step: the p50 of each step's cycle (one attempt's recorded end to the
               next one's), against the bare Invoke and against a bare Invoke that carries a step token
  floor        (--floor) the bare loop plus what issues 10, 13 and 14 put on every durable step: a signed step
               token the agent checks, and a hash-chained, redacted audit record written with the step's end
  gateway      (--gateway N) one-step tasks submitted and watched through a gateway process (TLS + bearer JWT) and
               straight to the planner, alternating: the real path of issue 14's target in a deployment's layout
  crash        a planner SIGKILLed with slow steps in flight; a second one started at once: seconds from the kill
               until the first step of the dead planner is running again (bound: 2 x lease TTL)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TRUST_DOMAIN = "agentmesh.bench"
PLAYBOOKS = {
    "wide": """
name: wide
defaults: {agent: {names: [bench/noop]}, timeout: 10}
steps:
""",
    "chain": """
name: chain
defaults: {agent: {names: [bench/noop]}, timeout: 10}
steps:
""",
    "slow": """
name: slow
defaults: {agent: {names: [bench/noop]}, timeout: 30}
steps:
  - {id: s, skill: wait, input: {seconds: 3}}
""",
}


def _playbooks(folder: Path, width: int, chain: int) -> None:
    wide = PLAYBOOKS["wide"] + "".join(f"  - {{id: s{i}, skill: noop, input: {{n: {i}}}}}\n" for i in range(width))
    steps = "  - {id: s0, skill: noop, input: {n: 0}}\n" + "".join(
        f"  - {{id: s{i}, skill: noop, depends_on: [s{i - 1}], input: {{n: {i}}}}}\n" for i in range(1, chain)
    )
    (folder / "wide.yaml").write_text(wide)
    (folder / "chain.yaml").write_text(PLAYBOOKS["chain"] + steps)
    (folder / "slow.yaml").write_text(PLAYBOOKS["slow"])
    (folder / "one.yaml").write_text(PLAYBOOKS["wide"].replace("name: wide", "name: one") + "  - {id: s0, skill: noop, input: {n: 1}}\n")


AGENT_SOURCE = '''
import asyncio
from pydantic import BaseModel
from agentmesh.agent import Agent, AgentInfo, SkillContext, skill

class In(BaseModel):
    n: int = 0
    seconds: float = 0.0

class Out(BaseModel):
    n: int = 0

class Noop(Agent):
    card = AgentInfo(name="noop", namespace="bench", version="1.0.0", purpose="bench", description="Does nothing.")

    @skill(description="Return at once")
    async def noop(self, request: In, ctx: SkillContext) -> Out:
        return Out(n=request.n)

    @skill(description="Wait, then return")
    async def wait(self, request: In, ctx: SkillContext) -> Out:
        await asyncio.sleep(request.seconds)
        return Out(n=request.n)
'''


def _env(home: Path, url: str, registry: str, playbooks: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{home}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "AGENTMESH_HOME": str(home),
        "AGENTMESH_TRUST_DOMAIN": TRUST_DOMAIN,
        "AGENTMESH_DATABASE_URL": url,
        "AGENTMESH_REGISTRY_ADDRESS": registry,
        "AGENTMESH_PLANNER_PLAYBOOKS_PATH": str(playbooks),
        "AGENTMESH_LOG_LEVEL": "WARNING",
        "AGENTMESH_TRACE_SAMPLING": "0",
        **extra,
    }


def _spawn(argv: list[str], env: dict[str, str], log: Path, profile: str = "") -> subprocess.Popen[bytes]:
    python = [sys.executable, str(Path(__file__).with_name("_cpu_profile.py")), profile] if profile else [sys.executable]
    return subprocess.Popen([*python, "-m", "agentmesh.cli", *argv], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def _serving(address: str, settings: Any) -> None:
    from agentmesh._channel import create_channel
    from agentmesh._health import wait_until_serving

    channel = create_channel(address, settings, kind="client", name="ops")
    try:
        await wait_until_serving(channel, within=60.0)
    finally:
        await channel.close()


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _submit_all(stub: Any, playbook: str, count: int) -> list[str]:
    import grpc

    from agentmesh.v1 import task_pb2

    async def one(i: int) -> str:
        request = task_pb2.SubmitTaskRequest(goal="bench", playbook=playbook, request_id=uuid.uuid4().hex)
        for _ in range(5):  # the request id makes a resubmission safe
            try:
                return str((await stub.SubmitTask(request, timeout=60)).task.task_id)
            except grpc.aio.AioRpcError as exc:
                print(f"resubmitting after {exc.code().name}: {exc.details()}", file=sys.stderr)
                await asyncio.sleep(0.5)
        raise SystemExit("submissions keep failing")

    ids: list[str] = []
    for start in range(0, count, 16):
        ids += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 16))))
    return ids


async def _wait_done(url: str, task_ids: list[str]) -> float:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        while True:
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND state IN ('SUCCEEDED','FAILED','CANCELLED')",
                    (task_ids,),
                )
            ).fetchone()
            if row and row[0] == len(task_ids):
                return time.perf_counter()
            await asyncio.sleep(0.01)


async def _ended_at(url: str, task_id: str) -> float:
    """When the planner recorded a task's final state (epoch seconds)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        row = await (await conn.execute("SELECT extract(epoch FROM updated_at) FROM tasks WHERE task_id = %s",
                                        (task_id,))).fetchone()
    assert row is not None
    return float(row[0])


async def _attempt_times(url: str, task_ids: list[str]) -> tuple[list[float], int]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT extract(epoch FROM finished_at - started_at), state FROM step_attempts WHERE task_id = ANY(%s)",
                (task_ids,),
            )
        ).fetchall()
        errors = await (
            await conn.execute(
                "SELECT error_code, left(error_message, 80), count(*) FROM step_attempts WHERE task_id = ANY(%s) "
                "AND state = 'FAILED' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 3",
                (task_ids,),
            )
        ).fetchall()
    if errors:
        print(f"failed attempts: {errors}", file=sys.stderr)
    return [float(r[0]) * 1000 for r in rows if r[0] is not None], sum(1 for r in rows if r[1] != "SUCCEEDED")


async def _chain_gaps(url: str, task_ids: list[str]) -> tuple[float, str]:
    """Where a chain's time goes, per step (medians): step claimed -> attempt recorded as started -> attempt
    ended -> the next step claimed."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        chains = [
            await (
                await conn.execute(
                    "SELECT s.started_at, a.started_at, a.finished_at FROM plan_steps s JOIN step_attempts a "
                    "ON a.plan_step_id = s.id WHERE s.task_id = %s ORDER BY s.position",
                    (task_id,),
                )
            ).fetchall()
            for task_id in task_ids
        ]
    ms = lambda a, b: (b - a).total_seconds() * 1000  # noqa: E731
    start = [ms(r[0], r[1]) for rows in chains for r in rows]
    call = [ms(r[1], r[2]) for rows in chains for r in rows]
    gap = [ms(rows[i][2], rows[i + 1][0]) for rows in chains for i in range(len(rows) - 1)]
    # One step's whole cycle: from one attempt's end to the next one's end, as the planner stamped them (the same
    # point of consecutive cycles), so each step of the chain is a sample and the p50 is per step.
    cycle = [ms(rows[i][2], rows[i + 1][2]) for rows in chains for i in range(len(rows) - 1)]
    return statistics.median(cycle), (
        f"claimed->started {statistics.median(start):.1f} ms, started->ended {statistics.median(call):.1f} ms, "
        f"ended->next claimed {statistics.median(gap):.1f} ms (medians)")


async def _bare_loop(
    url: str, settings: Any, endpoint: str, steps: int, in_flight: int, mandated: bool = False
) -> tuple[float, list[float]]:
    """The baseline: claim with SKIP LOCKED in batches, call the agent over mTLS, record; same in-flight bound.

    ``mandated``: plus the per-step work other issues put on every durable step, whatever the planner's design:
    a signed step token in each Invoke (issue 13; the agent checks it, issue 10) and the attempt's audit record,
    PII-redacted and hash-chained, written in the step's recording transaction (issue 14). The chain is kept in
    memory (this loop is the only appender while it runs), so no lock or head read is paid: a floor."""
    import contextlib

    import psycopg
    from psycopg.types.json import Jsonb
    from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg

    from agentmesh._channel import create_channel
    from agentmesh.audit import AuditEntry
    from agentmesh.audit._append import AUDIT_INSERT, chain_rows
    from agentmesh.services.planner.tokens import StepTokens
    from agentmesh.v1 import agent_pb2, agent_pb2_grpc

    plain = url.replace("+psycopg", "")
    async with await psycopg.AsyncConnection.connect(plain, autocommit=True) as conn:
        await conn.execute("DROP TABLE IF EXISTS bare_steps")
        await conn.execute(
            "CREATE TABLE bare_steps (id bigserial PRIMARY KEY, state text NOT NULL DEFAULT 'READY', "
            "owner text, lease timestamptz, output jsonb)"
        )
        await conn.execute("INSERT INTO bare_steps (state) SELECT 'READY' FROM generate_series(1, %s)", (steps,))
    channel = create_channel(endpoint, settings, kind="service", name="planner")
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    latencies: list[float] = []
    failures: list[BaseException] = []
    semaphore = asyncio.Semaphore(in_flight)
    idle: asyncio.Queue[Any] = asyncio.Queue()
    for _ in range(16):
        idle.put_nowait(await psycopg.AsyncConnection.connect(plain, autocommit=True))
    tokens = StepTokens(settings) if mandated else None
    audit_row = str(AUDIT_INSERT.compile(dialect=postgresql_psycopg.dialect()))  # the library's own insert
    audience = f"spiffe://{settings.trust_domain}/agent/bench/noop"
    head: list[Any] = [None]
    if mandated:
        async with await psycopg.AsyncConnection.connect(plain, autocommit=True) as conn:
            head[0] = await (await conn.execute(
                "SELECT sequence, record_hash FROM audit_records ORDER BY sequence DESC LIMIT 1")).fetchone()

    @contextlib.asynccontextmanager
    async def connection() -> Any:
        conn = await idle.get()
        try:
            yield conn
        finally:
            idle.put_nowait(conn)

    async def run_step(step_id: int) -> None:
        try:
            await one_step(step_id)
        except BaseException as exc:
            failures.append(exc)
            raise
        finally:
            semaphore.release()

    async def one_step(step_id: int) -> None:
        started = time.perf_counter()
        request = agent_pb2.InvokeRequest(skill="noop", idempotency_key=f"{'floor' if mandated else 'bare'}/{step_id}")
        request.input.update({"n": step_id})
        if tokens is not None:
            request.task_id, request.step_id = f"bare-{step_id}", "s"
            request.delegation_token = tokens.mint(audience=audience, subject="user@bench", tenant="bench",
                                                   scopes=["tasks:submit"], task_id=request.task_id, step_id="s",
                                                   actor_chain=(f"spiffe://{settings.trust_domain}/service/planner",),
                                                   ttl_seconds=40)
        reply = await stub.Invoke(request, timeout=10)
        audit: list[dict[str, Any]] = []
        if tokens is not None:
            entry = AuditEntry("step.attempt", resource=f"tasks/bare-{step_id}/steps/s", actor="bench",
                               on_behalf_of="user@bench", detail={"attempt": 1, "state": "SUCCEEDED"})
            audit = chain_rows([entry], head[0])
            head[0] = (audit[-1]["sequence"], audit[-1]["record_hash"])
        async with connection() as conn:
            async with conn.pipeline():
                await conn.execute(
                    "UPDATE bare_steps SET state='DONE', output=%s::jsonb, owner=NULL WHERE id=%s",
                    (json.dumps({"n": int(reply.output["n"])}), step_id),
                )
                for row in audit:
                    await conn.execute(audit_row, {**row, "detail": Jsonb(row["detail"])})
        latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    running: set[asyncio.Task[None]] = set()
    while True:
        await semaphore.acquire()
        async with connection() as conn:
            rows = await (
                await conn.execute(
                    "UPDATE bare_steps SET state='RUNNING', owner='bare', lease=now() + interval '5 s' WHERE id IN "
                    "(SELECT id FROM bare_steps WHERE state='READY' ORDER BY id LIMIT 32 FOR UPDATE SKIP LOCKED) "
                    "RETURNING id"
                )
            ).fetchall()
        if not rows:
            semaphore.release()
            break
        for index, (step_id,) in enumerate(rows):
            if index:
                await semaphore.acquire()
            task = asyncio.create_task(run_step(step_id))
            running.add(task)
            task.add_done_callback(running.discard)
    await asyncio.gather(*running, return_exceptions=True)
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} bare steps failed, the first: {failures[0]!r}")
    while not idle.empty():
        await (await idle.get()).close()
    await channel.close()
    return steps / elapsed, latencies


async def _bare_call_p50(settings: Any, endpoint: str, calls: int = 300, *, token: bool = False) -> float:
    """p50 of a bare mTLS Invoke of the trivial skill. ``token``: each call carries a step token for the agent,
    minted before the clock starts (the agent's check of it is timed: every step's call carries one)."""
    from agentmesh._channel import create_channel
    from agentmesh.services.planner.tokens import StepTokens
    from agentmesh.v1 import agent_pb2, agent_pb2_grpc

    tokens = StepTokens(settings) if token else None
    async with create_channel(endpoint, settings, kind="service", name="planner") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        times = []
        for i in range(calls):
            request = agent_pb2.InvokeRequest(skill="noop", idempotency_key=f"p50/{uuid.uuid4().hex}")
            request.input.update({"n": i})
            if tokens is not None:
                request.task_id, request.step_id = f"p50-{i}", "s"
                request.delegation_token = tokens.mint(
                    audience=f"spiffe://{settings.trust_domain}/agent/bench/noop", subject="user@bench",
                    tenant="bench", scopes=["tasks:submit"], task_id=request.task_id, step_id="s",
                    actor_chain=(f"spiffe://{settings.trust_domain}/service/planner",), ttl_seconds=40)
            started = time.perf_counter()
            await stub.Invoke(request, timeout=10)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[20:])


async def _gateway_path(tasks: int, env: dict[str, str], logs: Path, planner: str, settings: Any,
                        children: list[subprocess.Popen[bytes]]) -> str:
    """One-step tasks (the trivial agent) submitted and watched through a gateway process (TLS + bearer JWT) and
    straight to the planner (mTLS), alternating, each process on its own as in a deployment."""
    import grpc

    from agentmesh._channel import create_channel
    from agentmesh._health import wait_until_serving
    from agentmesh.inference import free_port
    from agentmesh.services.gateway.devtokens import DevIssuer
    from agentmesh.v1 import task_pb2, task_pb2_grpc
    from bench._gateway_path import _watch

    issuer = DevIssuer.from_settings(settings)
    issuer.rotate()
    port = free_port()
    limits = {f"AGENTMESH_GATEWAY_{kind}_PER_{who}": "1000000" for kind in ("RATE", "BURST") for who in ("PRINCIPAL", "TENANT")}
    children.append(_spawn(["gateway", "--port", str(port)], {**env, "AGENTMESH_PLANNER_ADDRESS": planner,
                                                             "AGENTMESH_CONSOLE_PORT": "-1", **limits}, logs / "gateway.log"))
    public = grpc.aio.secure_channel(
        f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_certificates=(settings.home / "ca" / "ca.pem").read_bytes())
    )
    direct = create_channel(planner, settings, kind="client", name="ops")
    try:
        await wait_until_serving(public, within=60.0)
        token = issuer.issue(subject="bench-user", scopes=["tasks:submit", "tasks:read"], ttl_seconds=3600)
        paths = {"gateway": (task_pb2_grpc.TaskServiceStub(public), (("authorization", f"Bearer {token}"),)),
                 "direct": (task_pb2_grpc.TaskServiceStub(direct), ())}
        times: dict[str, list[float]] = {name: [] for name in paths}
        for round_ in range(tasks + 20):  # 20 warm-up rounds
            for name, (stub, metadata) in paths.items():
                started = time.perf_counter()
                task = (await stub.SubmitTask(task_pb2.SubmitTaskRequest(goal="one", playbook="one"),
                                              metadata=metadata, timeout=10)).task
                await _watch(stub, task.task_id, metadata)
                if round_ >= 20:
                    times[name].append((time.perf_counter() - started) * 1000)
    finally:
        await public.close()
        await direct.close()
    gateway, planner_only = (statistics.median(times[name]) for name in ("gateway", "direct"))
    return (f"one-step task, submit to watched SUCCEEDED, {tasks} per path, each service its own process: gateway p50 "
            f"{gateway:.2f} ms (p90 {_pct(times['gateway'], 0.9):.2f}), planner directly p50 {planner_only:.2f} ms (p90 "
            f"{_pct(times['direct'], 0.9):.2f}); gateway / direct {gateway / planner_only:.2f}x (+{gateway - planner_only:.2f} ms)")


async def _agent_endpoint(settings: Any) -> str:
    from agentmesh._registry_client import RegistryClient

    async with RegistryClient(settings, kind="client", name="ops") as registry:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            page = await registry.list_agents(namespace="bench")
            if page.instances:
                return str(page.instances[0].card.endpoint)
            await asyncio.sleep(0.2)
    raise SystemExit("the bench agent never registered")


async def run(args: argparse.Namespace, url: str, home: Path) -> list[str]:
    from agentmesh._channel import create_channel
    from agentmesh._settings import Settings
    from agentmesh.inference import free_port
    from agentmesh.v1 import task_pb2_grpc

    report: list[str] = []
    settings = Settings(home=home, trust_domain=TRUST_DOMAIN, log_level="WARNING")
    (home / "bench_noop.py").write_text(AGENT_SOURCE)
    playbooks = home / "playbooks"
    playbooks.mkdir()
    _playbooks(playbooks, args.width, args.chain)
    registry_port, planner_port = free_port(), free_port()
    registry = f"127.0.0.1:{registry_port}"
    env = _env(home, url, registry, playbooks, AGENTMESH_PLANNER_LEASE_TTL=str(args.lease_ttl))
    logs = home / "logs"
    logs.mkdir()
    children = [_spawn(["registry", "--port", str(registry_port)], env, logs / "registry.log")]
    try:
        await _serving(registry, settings)
        children.append(_spawn(["agent", "run", "bench_noop:Noop", "--port", "0"], env, logs / "agent.log"))
        endpoint = await _agent_endpoint(settings.replace(registry_address=registry))
        planner = f"127.0.0.1:{planner_port}"
        first = _spawn(["planner", "--port", str(planner_port)], env, logs / "planner.log", args.profile)
        children.append(first)
        await _serving(planner, settings)
        async with create_channel(planner, settings, kind="client", name="ops") as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            await _wait_done(url, await _submit_all(stub, "wide", 5))  # warm: channels, discovery, plans
            steps = args.tasks * args.width
            cpu = _cpu(first.pid)
            started = time.perf_counter()
            ids = await _submit_all(stub, "wide", args.tasks)
            submitted = time.perf_counter() - started
            finished = await _wait_done(url, ids)
            cpu = (_cpu(first.pid) - cpu) * 1000 / steps
            rate = steps / (finished - started)
            times, failed = await _attempt_times(url, ids)
            bare_rate, bare_times = await _bare_loop(url, settings, endpoint, steps, in_flight=256)
            if args.floor:
                floor_rate, floor_times = await _bare_loop(url, settings, endpoint, steps, in_flight=256, mandated=True)
                report.append(
                    f"floor: the bare loop plus the step token and the audit record every step must carry "
                    f"{floor_rate:,.0f} steps/s (p50 {_pct(floor_times, 0.5):.1f} ms p99 {_pct(floor_times, 0.99):.1f} ms) "
                    f"= {floor_rate / bare_rate:.2f}x the bare loop; the planner is {rate / floor_rate:.2f}x this floor"
                )
            report.append(
                f"throughput: planner {rate:,.0f} steps/s ({args.tasks} tasks x {args.width} parallel steps, {failed} failed), "
                f"attempt p50 {_pct(times, 0.5):.1f} ms p99 {_pct(times, 0.99):.1f} ms; bare loop {bare_rate:,.0f} steps/s "
                f"(p50 {_pct(bare_times, 0.5):.1f} ms p99 {_pct(bare_times, 0.99):.1f} ms); ratio {rate / bare_rate:.2f}x; "
                f"submissions took {submitted:.2f} s of the planner's {finished - started:.2f} s; planner CPU "
                f"{cpu:.2f} ms per step (submission included)"
            )
            call_p50 = await _bare_call_p50(settings, endpoint)
            token_call_p50 = await _bare_call_p50(settings, endpoint, token=True)
            cpu = _cpu(first.pid)
            chain_ids, per_chain = [], []
            for _ in range(args.chains):  # one after another: one step in flight throughout
                submitted_at = time.time()
                chain_ids += await _submit_all(stub, "chain", 1)
                await _wait_done(url, chain_ids[-1:])
                # Done when the planner recorded the task's end (this machine's clock, like time.time()), not
                # when the 10 ms poll above noticed it.
                per_chain.append((await _ended_at(url, chain_ids[-1]) - submitted_at) * 1000 / args.chain)
            per_step = statistics.median(per_chain)
            cycle_p50, gaps = await _chain_gaps(url, chain_ids)
            cpu = (_cpu(first.pid) - cpu) * 1000 / (args.chain * args.chains)
            chains = f"{args.chain}-step chain" if args.chains == 1 else f"{args.chain}-step chain (median of {args.chains})"
            report.append(
                f"overhead at 1 in flight: {per_step:.2f} ms per step over a {chains} (submit to done) vs "
                f"bare mTLS Invoke p50 {call_p50:.2f} ms: planner overhead {per_step - call_p50:.2f} ms per step; planner CPU "
                f"{cpu:.2f} ms per step; {gaps}"
            )
            report.append(
                f"per step p50 (each step's cycle, attempt end to the next attempt's end, as recorded): {cycle_p50:.2f} ms: "
                f"{cycle_p50 - call_p50:.2f} ms over the bare Invoke p50 ({call_p50:.2f} ms), {cycle_p50 - token_call_p50:.2f} ms "
                f"over a bare Invoke carrying a step token the agent checks (p50 {token_call_p50:.2f} ms)"
            )
        if args.gateway:
            report.append(await _gateway_path(args.gateway, env, logs, planner, settings, children))
        if not args.skip_crash:
            async with create_channel(planner, settings, kind="client", name="ops") as channel:
                stub = task_pb2_grpc.TaskServiceStub(channel)
                # A standby replica, as in production (its start-up is not part of the recovery).
                second_port = free_port()
                children.append(_spawn(["planner", "--port", str(second_port)], env, logs / "planner2.log"))
                await _serving(f"127.0.0.1:{second_port}", settings)
                slow_ids = await _submit_all(stub, "slow", 20)
                await asyncio.sleep(1.0)  # the calls are in flight
            first.send_signal(signal.SIGKILL)
            killed = time.time()
            first.wait()
            await _wait_done(url, slow_ids)
            import psycopg

            async with await psycopg.AsyncConnection.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
                row = await (
                    await conn.execute(
                        "SELECT min(extract(epoch FROM started_at)) FROM step_attempts WHERE task_id = ANY(%s) AND attempt > 1",
                        (slow_ids,),
                    )
                ).fetchone()
            resumed = float(row[0]) - killed if row and row[0] is not None else float("nan")
            report.append(
                f"crash-to-resume: {resumed:.2f} s from SIGKILL to the first step running again on the second planner "
                f"(lease TTL {args.lease_ttl} s; bound {2 * args.lease_ttl} s)"
            )
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        keep = Path(tempfile.gettempdir()) / "bench-planner-logs"
        keep.mkdir(exist_ok=True)
        for log in logs.glob("*.log"):
            (keep / log.name).write_bytes(log.read_bytes())
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--chain", type=int, default=30)
    parser.add_argument("--chains", type=int, default=1, help="chain tasks run one after another (overhead: their median)")
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--skip-crash", action="store_true")
    parser.add_argument("--floor", action="store_true",
                        help="also the bare loop plus the per-step work issues 10, 13 and 14 require (step token, audit record)")
    parser.add_argument("--gateway", type=int, default=0, metavar="N",
                        help="also N one-step tasks through a gateway process and N straight to the planner, alternating")
    parser.add_argument("--profile", default="", help="write a CPU-time cProfile of the (first) planner process to this file")
    args = parser.parse_args()

    from agentmesh.security import CertificateAuthority
    from agentmesh.storage import upgrade
    from tests.fixtures.postgres import _throwaway_server

    with _throwaway_server() as server, tempfile.TemporaryDirectory(prefix="bench-planner-") as tmp:
        server.execute('CREATE DATABASE "bench_planner"')
        url = server.url("bench_planner")
        upgrade(url)
        home = Path(tmp)
        authority = CertificateAuthority.init(home, TRUST_DOMAIN)
        for kind, name in (("service", "registry"), ("service", "planner"), ("service", "gateway"), ("client", "ops"),
                           ("agent", "bench/noop")):
            authority.ensure(kind, name)
        os.chmod(home, 0o755)
        report = asyncio.run(run(args, url, home))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
