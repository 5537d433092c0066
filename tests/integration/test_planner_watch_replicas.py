"""A WatchTask on one planner replica follows a task another replica runs, as it happens (PostgreSQL
LISTEN/NOTIFY), not at its next poll (which backs off to a second while the task is quiet)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.v1 import task_pb2
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import FINAL, PlannerMesh, StartPlanner
from tests.fixtures.registry import StartRegistry
from tests.integration.planner_agents import Worker

pytestmark = pytest.mark.asyncio

QUIET = """
name: quiet
defaults: {agent: {names: [testing/worker]}, timeout: 30}
steps:
  - {id: wait, skill: slow, input: {label: done, seconds: "${task.input.seconds}"}}
"""


@pytest.fixture
async def replicas(
    migrated_postgres_url: str,
    start_registry: StartRegistry,
    start_planner: StartPlanner,
    mesh_settings: Settings,
    issue_identity: IssueIdentity,
) -> AsyncIterator[tuple[PlannerMesh, PlannerMesh]]:
    registry = await start_registry(migrated_postgres_url)
    first = await start_planner(migrated_postgres_url, registry.address)
    second = await start_planner(migrated_postgres_url, registry.address)
    meshes = (
        PlannerMesh(registry, first, first.settings, migrated_postgres_url),
        PlannerMesh(registry, second, second.settings, migrated_postgres_url),
    )
    for mesh in meshes:
        mesh.add_playbook(QUIET)
    issue_identity("agent", "testing/worker")
    worker = Worker(mesh_settings.replace(lease_ttl=10.0))
    async with AgentRuntime(worker, port=0, registry_address=registry.address) as runtime:
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        yield meshes
    for mesh in meshes:
        await mesh.close()


async def _lag(runner: PlannerMesh, watcher: PlannerMesh, seconds: float) -> float:
    """Seconds between the task's end (as stored) and the watch on the other replica showing it."""
    task = await runner.submit("wait quietly", {"seconds": seconds}, playbook="quiet")
    stub = watcher.stub()
    async for event in stub.WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id), timeout=30):
        if event.task.state in FINAL:
            seen = time.time()
            assert event.task.state == task_pb2.TASK_STATE_SUCCEEDED, event.task.error
            return seen - event.task.update_time.ToNanoseconds() / 1e9
    raise AssertionError("the watch ended without the task's end")


async def test_a_watch_on_another_replica_sees_the_end_at_once(
    replicas: tuple[PlannerMesh, PlannerMesh],
) -> None:
    runner, watcher = replicas
    # Quiet for ~2 s: the watcher's poll has backed off to a second by the time each task ends, so a poll alone
    # would show the end up to a second late (three tasks, ending at different moments of that second).
    lags = await asyncio.gather(*(_lag(runner, watcher, s) for s in (2.0, 2.3, 2.6)))
    assert max(lags) < 0.3, lags


async def test_a_replica_that_stopped_listening_listens_again_for_its_next_watch(
    replicas: tuple[PlannerMesh, PlannerMesh], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replica listens for other replicas' commits only while it has watchers (and a linger after): once it has
    # stopped, the next watch must make it listen again, or that watch would see the end only at its next poll.
    from agentmesh.services.planner import engine as engine_module

    monkeypatch.setattr(engine_module, "_LISTEN_LINGER", 0.2)
    runner, watcher = replicas
    assert await _lag(runner, watcher, 0.5) < 0.3
    listening = watcher.planner.engine._watched
    for _ in range(200):  # the listen loop lets go within a second of the linger's end (polled, 10 s at most)
        if not listening.is_set():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the replica kept listening with no watcher left")
    lags = await asyncio.gather(*(_lag(runner, watcher, s) for s in (2.0, 2.3)))
    assert max(lags) < 0.3, lags
