"""PostgreSQL goes away while a planner is recovering another's plans.

Planner A (its own process) runs tasks and is killed with SIGKILL mid-plan; planner B takes over once A's
leases lapse; while B is recovering, PostgreSQL is stopped for 5 s and started again. Every acknowledged task
still finishes, none is left in a running state, B's clients see UNAVAILABLE and then recover, and the
agents' counters prove no skill ran twice (two instances of the agent).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from agentmesh._channel import create_channel
from agentmesh._settings import Settings
from agentmesh.v1 import task_pb2, task_pb2_grpc
from tests.fixtures.planner import StartPlanner
from tests.fixtures.registry import RegistryReplica
from tests.integration.planner_agents import Worker
from tests.integration.test_planner_crash import (  # noqa: F401 - two_workers is a fixture
    LEASE_TTL,
    RestartablePostgres,
    _ran,
    _spawn_planner,
    _wait_all,
    two_workers,
)

pytestmark = pytest.mark.postgres

# Slow steps, so B is still recovering (calls in flight, steps left) when the database goes away.
LONG_CHAIN = """
name: long_chain
defaults: {agent: {names: [testing/worker]}, timeout: 20, retry: {max_attempts: 3, initial_backoff: 0.1}}
steps:
  - {id: one, skill: slow, input: {label: "${task.input.n}", seconds: 0.8}}
  - {id: two, skill: slow, depends_on: [one], input: {label: "${steps.one.output.label}", seconds: 0.8}}
  - {id: three, skill: slow, depends_on: [two], input: {label: "${steps.two.output.label}", seconds: 0.8}}
"""
TASKS = 20
STEPS = ("one", "two", "three")


def _completed(workers: list[Worker]) -> int:
    return sum(sum(w.completed.values()) for w in workers)


async def _until_available(stub: task_pb2_grpc.TaskServiceStub, task_id: str, within: float) -> int:
    """Poll GetTask until it answers; returns how many UNAVAILABLE answers came first (any other code fails).

    Most come from the client's own circuit breaker for the planner's address, opened by the outage's
    UNAVAILABLE answers: it refuses at once until its open period ends (the planner answers sooner)."""
    refused = 0
    async with asyncio.timeout(within):
        while True:
            try:
                await stub.GetTask(task_pb2.GetTaskRequest(task_id=task_id), timeout=10)
                return refused
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                refused += 1
                await asyncio.sleep(0.2)


async def test_postgres_stopped_while_a_planner_recovers_a_killed_ones_plans_every_task_still_finishes(
    two_workers: tuple[RegistryReplica, list[Worker]],  # noqa: F811 - the imported fixture
    start_planner: StartPlanner,
    mesh_settings: Settings,
    tmp_path: Path,
) -> None:
    import psycopg

    registry, workers = two_workers
    (tmp_path / "long_chain.yaml").write_text(LONG_CHAIN)
    server = await asyncio.to_thread(RestartablePostgres)
    try:
        url = await asyncio.to_thread(server.migrated, "planner")

        # Planner A runs the tasks and dies mid-plan.
        first, address = await _spawn_planner(mesh_settings, url, registry.address, tmp_path, tmp_path / "a.log")
        try:
            async with create_channel(address, mesh_settings, kind="client", name="ops") as channel:
                stub = task_pb2_grpc.TaskServiceStub(channel)
                task_ids = []
                for n in range(TASKS):
                    request = task_pb2.SubmitTaskRequest(goal="long chain", playbook="long_chain", request_id=f"q{n}")
                    request.input.update({"n": f"t{n}"})
                    task_ids.append((await stub.SubmitTask(request, timeout=30)).task.task_id)
                async with asyncio.timeout(60):
                    while _completed(workers) < TASKS // 2:  # noqa: ASYNC110 - the agents' counters
                        await asyncio.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        at_kill = _completed(workers)

        # Planner B recovers A's plans (A's leases lapse after LEASE_TTL) ...
        second = await start_planner(url, registry.address, planner_lease_ttl=LEASE_TTL)
        second.engine.planner.playbooks.add(_long_chain())
        async with create_channel(second.address, mesh_settings, kind="client", name="ops") as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            async with asyncio.timeout(30):
                while _completed(workers) <= at_kill:  # noqa: ASYNC110 - B has resumed work of A's
                    await asyncio.sleep(0.01)
            left = TASKS * len(STEPS) - _completed(workers)
            assert left >= TASKS // 2, left  # ... and is still in the middle of it
            # ... when PostgreSQL goes away for 5 s.
            await asyncio.to_thread(server.stop)
            with pytest.raises(grpc.aio.AioRpcError) as away:
                await stub.GetTask(task_pb2.GetTaskRequest(task_id=task_ids[0]), timeout=10)
            assert away.value.code() == grpc.StatusCode.UNAVAILABLE
            # A submission during the outage is refused (UNAVAILABLE, retryable): not acknowledged, not lost.
            late = task_pb2.SubmitTaskRequest(goal="long chain", playbook="long_chain", request_id="late")
            late.input.update({"n": "late"})
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SubmitTask(late, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(5.0)
            await asyncio.to_thread(server.start)
            refusals = await _until_available(stub, task_ids[0], within=30)
            # The client's retry of the refused submission is acknowledged now, and runs too.
            task_ids.append((await stub.SubmitTask(late, timeout=30)).task.task_id)

            tasks = await _wait_all(stub, task_ids, within=120)
            twice = [(t, s) for t in task_ids for s in STEPS if _ran(workers, f"{t}/{s}") != 1]
            log = []
            for task_id, step in twice:  # what the execution log says, to see how it happened
                explained = (await stub.ExplainTask(task_pb2.ExplainTaskRequest(task_id=task_id), timeout=30)).explanation
                log.append((task_id, step, {w.instance: w.completed[f"{task_id}/{step}"] for w in workers}, [
                    (a.attempt, a.planner[-12:], a.agent.instance_id[-8:], task_pb2.StepState.Name(a.state), a.replayed,
                     a.error_code, a.start_time.ToDatetime().time().isoformat(), a.end_time.ToDatetime().time().isoformat())
                    for a in explained.attempts if a.step_id == step
                ], [(c.attempt, c.reason[:160]) for c in explained.collaborators if c.step_id == step]))
        print(f"steps done: {at_kill} at the kill, {TASKS * len(STEPS) - left} when PostgreSQL stopped; "
              f"{refusals} UNAVAILABLE answers after it started again")
        assert [t.state for t in tasks] == [task_pb2.TASK_STATE_SUCCEEDED] * len(task_ids), [t.error for t in tasks]
        assert {t.output["three"]["label"] for t in tasks} == {f"t{n}" for n in range(TASKS)} | {"late"}
        assert not twice, log
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/planner", autocommit=True) as conn:
            stuck = conn.execute(
                "SELECT count(*) FROM plan_steps WHERE state IN ('RUNNING', 'READY', 'PENDING')"
            ).fetchone()
            running = conn.execute("SELECT count(*) FROM tasks WHERE state NOT IN ('SUCCEEDED')").fetchone()
        assert stuck == (0,) and running == (0,)
    finally:
        await asyncio.to_thread(server.remove)


def _long_chain() -> object:
    from agentmesh.services.planner.playbooks import Playbook

    return Playbook.from_yaml(LONG_CHAIN)
