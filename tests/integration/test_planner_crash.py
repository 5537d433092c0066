"""Crash safety on real PostgreSQL: a planner process killed with SIGKILL mid-plan, and PostgreSQL itself
stopped and restarted while tasks run. Every acknowledged task finishes, none is left running, and the
agents' own counters prove that no skill ran twice (two instances of the agent, so a retry must go back to
the instance whose idempotency cache knows the step).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh._channel import create_channel
from agentmesh._health import wait_until_serving
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.inference import free_port
from agentmesh.v1 import task_pb2, task_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import FINAL, StartPlanner
from tests.fixtures.registry import RegistryReplica, StartRegistry
from tests.integration.planner_agents import Worker

pytestmark = pytest.mark.postgres

CHAIN = """
name: chain
defaults: {agent: {names: [testing/worker]}, timeout: 20, retry: {max_attempts: 3, initial_backoff: 0.1}}
steps:
  - {id: one, skill: slow, input: {label: "${task.input.n}", seconds: 0.4}}
  - {id: two, skill: slow, depends_on: [one], input: {label: "${steps.one.output.label}", seconds: 0.4}}
  - {id: three, skill: shout, depends_on: [two], input: {text: "${steps.two.output.label}"}}
"""
TASKS = 50
LEASE_TTL = 2.0


def _popen(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def _spawn_planner(settings: Settings, database_url: str, registry: str, playbooks: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A planner in its own process (so it can be SIGKILLed), SERVING on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "AGENTMESH_HOME": str(settings.home),
        "AGENTMESH_TRUST_DOMAIN": settings.trust_domain,
        "AGENTMESH_DATABASE_URL": database_url,
        "AGENTMESH_REGISTRY_ADDRESS": registry,
        "AGENTMESH_PLANNER_LEASE_TTL": str(LEASE_TTL),
        "AGENTMESH_PLANNER_PLAYBOOKS_PATH": str(playbooks),
        "AGENTMESH_LOG_LEVEL": "WARNING",
    }
    process = _popen([sys.executable, "-m", "agentmesh.cli", "planner", "--port", str(port)], env, log)
    address = f"127.0.0.1:{port}"
    channel = create_channel(address, settings, kind="client", name="ops")
    try:
        await wait_until_serving(channel, within=60.0)
    finally:
        await channel.close()
    return process, address


@pytest.fixture
async def two_workers(
    start_registry: StartRegistry, migrated_postgres_url: str, mesh_settings: Settings, issue_identity: IssueIdentity
) -> AsyncIterator[tuple[RegistryReplica, list[Worker]]]:
    """A registry on PostgreSQL and two registered instances of the test agent."""
    registry = await start_registry(migrated_postgres_url)
    issue_identity("agent", "testing/worker")
    issue_identity("client", "ops")
    settings = mesh_settings.replace(lease_ttl=5.0)
    workers = [Worker(settings, instance="a"), Worker(settings, instance="b")]
    runtimes = [AgentRuntime(w, port=0, registry_address=registry.address) for w in workers]
    try:
        for runtime in runtimes:
            await runtime.start()
        async with asyncio.timeout(15):
            await asyncio.gather(*(r.wait_registered() for r in runtimes))
        yield registry, workers
    finally:
        await asyncio.gather(*(r.stop(grace=0.5) for r in runtimes))


def _ran(workers: list[Worker], key: str) -> int:
    return sum(w.completed[key] for w in workers)


async def _wait_all(stub: task_pb2_grpc.TaskServiceStub, task_ids: list[str], within: float) -> list[task_pb2.Task]:
    async with asyncio.timeout(within):
        while True:
            tasks = [(await stub.GetTask(task_pb2.GetTaskRequest(task_id=t), timeout=10)).task for t in task_ids]
            if all(t.state in FINAL for t in tasks):
                return tasks
            await asyncio.sleep(0.2)


async def test_a_second_planner_finishes_every_task_of_a_killed_one_and_no_skill_runs_twice(
    two_workers: tuple[RegistryReplica, list[Worker]],
    start_planner: StartPlanner,
    migrated_postgres_url: str,
    mesh_settings: Settings,
    tmp_path: Path,
) -> None:
    registry, workers = two_workers
    (tmp_path / "chain.yaml").write_text(CHAIN)
    first, address = await _spawn_planner(mesh_settings, migrated_postgres_url, registry.address, tmp_path, tmp_path / "p1.log")
    try:
        async with create_channel(address, mesh_settings, kind="client", name="ops") as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            task_ids = []
            for n in range(TASKS):
                request = task_pb2.SubmitTaskRequest(goal="chain", playbook="chain", request_id=f"r{n}")
                request.input.update({"n": f"t{n}"})
                task_ids.append((await stub.SubmitTask(request, timeout=30)).task.task_id)
            # Mid-plan: some first steps done, the rest (and every later step) still to run.
            async with asyncio.timeout(60):
                while sum(sum(w.completed.values()) for w in workers) < TASKS // 2:  # noqa: ASYNC110 - counters
                    await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    second = await start_planner(migrated_postgres_url, registry.address, planner_lease_ttl=LEASE_TTL)
    async with create_channel(second.address, mesh_settings, kind="client", name="ops") as channel:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        tasks = await _wait_all(stub, task_ids, within=120)
        assert [t.state for t in tasks] == [task_pb2.TASK_STATE_SUCCEEDED] * TASKS, [t.error for t in tasks]
        assert {t.output["three"]["text"] for t in tasks} == {f"T{n}" for n in range(TASKS)}
        # No skill ran twice: each step completed exactly once across both instances.
        for task_id in task_ids:
            for step in ("one", "two", "three"):
                assert _ran(workers, f"{task_id}/{step}") == 1, (task_id, step)
        # The second planner took over: its attempts started within two lease TTLs of the kill.
        resumed = []
        for task_id in task_ids:
            explanation = (await stub.ExplainTask(task_pb2.ExplainTaskRequest(task_id=task_id), timeout=30)).explanation
            resumed += [a for a in explanation.attempts if a.planner == second.replica_id]
    assert resumed
    first_resumed = min(a.start_time.ToDatetime().timestamp() for a in resumed)
    took = first_resumed - (time.time() - (time.monotonic() - killed_at))
    assert took <= 2 * LEASE_TTL + 1.0, took
    print(f"crash-to-resume {took:.2f}s with a {LEASE_TTL}s lease")


FAST_CHAIN = """
name: fast
defaults: {agent: {names: [testing/worker]}, timeout: 20}
steps:
  - {id: one, skill: shout, input: {text: "${task.input.n}"}}
  - {id: two, skill: shout, depends_on: [one], input: {text: "${steps.one.output.text}!"}}
  - {id: three, skill: shout, depends_on: [one], input: {text: "${steps.one.output.text}?"}}
"""


async def test_two_planners_audit_every_step_attempt_in_one_valid_chain(
    two_workers: tuple[RegistryReplica, list[Worker]],
    start_planner: StartPlanner,
    migrated_postgres_url: str,
    mesh_settings: Settings,
    tmp_path: Path,
) -> None:
    import sqlalchemy as sa

    from agentmesh.audit import verify_chain
    from agentmesh.storage import create_async_engine

    registry, _ = two_workers
    (tmp_path / "fast.yaml").write_text(FAST_CHAIN)
    planners = [
        await start_planner(migrated_postgres_url, registry.address, planner_playbooks_path=tmp_path)
        for _ in range(2)
    ]
    channels = [create_channel(p.address, mesh_settings, kind="client", name="ops") for p in planners]
    try:
        stubs = [task_pb2_grpc.TaskServiceStub(c) for c in channels]

        async def one(n: int) -> str:  # every other task to each planner, all at once: both append concurrently
            request = task_pb2.SubmitTaskRequest(goal="fast", playbook="fast", request_id=f"a{n}")
            request.input.update({"n": f"t{n}"})
            return str((await stubs[n % 2].SubmitTask(request, timeout=30)).task.task_id)

        task_ids = list(await asyncio.gather(*(one(n) for n in range(24))))
        tasks = await _wait_all(stubs[0], task_ids, within=120)
        assert [t.state for t in tasks] == [task_pb2.TASK_STATE_SUCCEEDED] * len(task_ids), [t.error for t in tasks]
    finally:
        for channel in channels:
            await channel.close()
    engine = create_async_engine(migrated_postgres_url)
    try:
        verdict = await verify_chain(engine)
        assert verdict.valid, verdict.message
        async with engine.connect() as conn:
            attempts = (
                await conn.execute(
                    sa.text("SELECT task_id, step_id, attempt, state, trace_id, planner FROM step_attempts "
                            "WHERE task_id = ANY(:ids)"),
                    {"ids": task_ids},
                )
            ).all()
            records = (
                await conn.execute(sa.text("SELECT resource, actor, outcome, trace_id, detail FROM audit_records "
                                           "WHERE action = 'step.attempt'"))
            ).all()
    finally:
        await engine.dispose()
    # One attempt per step, unless a lease lapsed on this busy machine (then the abandoned one is audited ABORTED).
    assert len({(a.task_id, a.step_id) for a in attempts if a.state == "SUCCEEDED"}) == 3 * len(task_ids)
    assert len({a.planner for a in attempts}) == 2  # both replicas ran steps (and appended)
    # Every step of a task is in its task's trace (whichever batch claimed it), and tasks do not share one.
    traces = {a.task_id: a.trace_id for a in attempts}
    assert all(a.trace_id == traces[a.task_id] for a in attempts) and len(set(traces.values())) == len(task_ids)
    audited = {(r.resource, r.detail["attempt"]): r for r in records}
    assert len(audited) == len(records) == len(attempts)
    for attempt in attempts:
        record = audited[f"tasks/{attempt.task_id}/steps/{attempt.step_id}", attempt.attempt]
        assert record.actor == f"spiffe://{mesh_settings.trust_domain}/service/planner"
        assert (record.outcome, attempt.state) in {("OK", "SUCCEEDED"), ("ABORTED", "FAILED")}
        assert record.trace_id == attempt.trace_id and record.detail["agent"] == "testing/worker@1.0.0"


class RestartablePostgres:
    """A PostgreSQL server of this test's own, stopped and started again on the same port."""

    def __init__(self) -> None:
        from tests.fixtures.postgres import _as_postgres_user, _pg_binary, _run

        self._as_postgres = _as_postgres_user
        self._pg_ctl = _pg_binary("pg_ctl") or "pg_ctl"
        self.base = Path(tempfile.mkdtemp(prefix="agentmesh-pg-outage-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.data, self.log = self.base / "data", self.base / "server.log"
        _run(
            _as_postgres_user([_pg_binary("initdb") or "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            "initdb",
        )
        self.port = free_port()
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def migrated(self, database: str) -> str:
        """The URL of a new database ``database`` on this server, migrated to the newest schema."""
        import psycopg

        from agentmesh.storage import upgrade

        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        upgrade(self.url(database))
        return self.url(database)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            self._as_postgres([self._pg_ctl, "-D", str(self.data), "-o", options, "-w", "-l", str(self.log), "start"]),
            check=True, capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._as_postgres([self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False, capture_output=True,
        )

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


async def test_postgres_stopped_for_five_seconds_while_tasks_run_every_acknowledged_task_still_finishes(
    two_workers: tuple[RegistryReplica, list[Worker]],
    start_planner: StartPlanner,
    mesh_settings: Settings,
) -> None:
    import grpc
    import psycopg

    registry, workers = two_workers
    server = await asyncio.to_thread(RestartablePostgres)
    try:
        url = await asyncio.to_thread(server.migrated, "planner")
        planner = await start_planner(url, registry.address, planner_lease_ttl=LEASE_TTL)
        planner.engine.planner.playbooks.add(_chain())
        async with create_channel(planner.address, mesh_settings, kind="client", name="ops") as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            task_ids = []
            for n in range(20):
                request = task_pb2.SubmitTaskRequest(goal="chain", playbook="chain", request_id=f"o{n}")
                request.input.update({"n": f"t{n}"})
                task_ids.append((await stub.SubmitTask(request, timeout=30)).task.task_id)
            async with asyncio.timeout(60):
                while sum(sum(w.completed.values()) for w in workers) < 5:  # noqa: ASYNC110 - counters
                    await asyncio.sleep(0.01)
            await asyncio.to_thread(server.stop)
            # While the database is away, callers get UNAVAILABLE (retryable), not a hang or a wrong answer.
            with pytest.raises(grpc.aio.AioRpcError) as away:
                await stub.GetTask(task_pb2.GetTaskRequest(task_id=task_ids[0]), timeout=10)
            assert away.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(5.0)  # the outage itself
            await asyncio.to_thread(server.start)
            async with asyncio.timeout(30):  # clients recover once it is back
                while True:
                    try:
                        await stub.GetTask(task_pb2.GetTaskRequest(task_id=task_ids[0]), timeout=10)
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE
                        await asyncio.sleep(0.2)
            tasks = await _wait_all(stub, task_ids, within=120)
        assert [t.state for t in tasks] == [task_pb2.TASK_STATE_SUCCEEDED] * len(task_ids), [t.error for t in tasks]
        for task_id in task_ids:
            for step in ("one", "two", "three"):
                assert _ran(workers, f"{task_id}/{step}") == 1, (task_id, step)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/planner", autocommit=True) as conn:
            stuck = conn.execute("SELECT count(*) FROM plan_steps WHERE state IN ('RUNNING', 'READY', 'PENDING')").fetchone()
        assert stuck == (0,)
    finally:
        await asyncio.to_thread(server.remove)


def _chain() -> Any:
    from agentmesh.services.planner.playbooks import Playbook

    return Playbook.from_yaml(CHAIN)
