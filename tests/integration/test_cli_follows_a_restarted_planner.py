"""``agentmesh submit`` follows its task through a planner killed with SIGKILL and started again (as
``agentmesh up`` does): it keeps waiting while the planner is away and prints the task's end, exit 0. It used to
give up at the first UNAVAILABLE after the watch broke ("the planner is unavailable right now"), exit 1, while
the task went on and succeeded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentmesh._channel import create_channel
from agentmesh._health import wait_until_serving
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.inference import free_port
from agentmesh.v1 import task_pb2, task_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.registry import StartRegistry
from tests.integration.planner_agents import Worker

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
PAUSE = """
name: pause
defaults: {agent: {names: [testing/worker]}, timeout: 20, retry: {max_attempts: 3, initial_backoff: 0.1}}
steps:
  - {id: wait, skill: slow, input: {label: waited, seconds: 2.5}}
  - {id: shout, skill: shout, depends_on: [wait], input: {text: "${steps.wait.output.label}"}}
"""


def _popen(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentmesh.cli", *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )


@pytest.fixture
async def worker(
    start_registry: StartRegistry, migrated_database_url: str, mesh_settings: Settings, issue_identity: IssueIdentity
) -> AsyncIterator[tuple[str, Worker]]:
    registry = await start_registry(migrated_database_url)
    issue_identity("agent", "testing/worker")
    issue_identity("service", "planner")
    issue_identity("client", "ops")
    agent = Worker(mesh_settings.replace(lease_ttl=10.0))
    async with AgentRuntime(agent, port=0, registry_address=registry.address) as runtime:
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        yield registry.address, agent


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_submit_keeps_following_through_a_planner_restart(
    worker: tuple[str, Worker], migrated_database_url: str, mesh_settings: Settings, tmp_path: Path
) -> None:
    registry, agent = worker
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "pause.yaml").write_text(PAUSE)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env.update(
        {
            "AGENTMESH_HOME": str(mesh_settings.home),
            "AGENTMESH_TRUST_DOMAIN": mesh_settings.trust_domain,
            "AGENTMESH_DATABASE_URL": migrated_database_url,
            "AGENTMESH_REGISTRY_ADDRESS": registry,
            "AGENTMESH_PLANNER_ADDRESS": f"127.0.0.1:{port}",
            "AGENTMESH_PLANNER_LEASE_TTL": "1.0",
            "AGENTMESH_PLANNER_PLAYBOOKS_PATH": str(tmp_path / "playbooks"),
            "AGENTMESH_LOG_LEVEL": "WARNING",
        }
    )

    async def planner() -> subprocess.Popen[bytes]:
        process = _popen(["planner", "--port", str(port)], env, tmp_path / "planner.log")
        async with create_channel(f"127.0.0.1:{port}", mesh_settings, kind="client", name="ops") as channel:
            await wait_until_serving(channel, within=60.0)
        return process

    first = await planner()
    second: subprocess.Popen[bytes] | None = None
    submit = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli", "submit", "pause", "--playbook", "pause", "--timeout", "60",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            await agent.started.wait()  # the slow step runs: the CLI is following
        first.send_signal(signal.SIGKILL)
        first.wait()
        await asyncio.sleep(1.5)  # the CLI finds the planner gone
        second = await planner()
        async with asyncio.timeout(90):
            out, err = await submit.communicate()
        async with create_channel(f"127.0.0.1:{port}", mesh_settings, kind="client", name="ops") as channel:
            listed = await task_pb2_grpc.TaskServiceStub(channel).ListTasks(task_pb2.ListTasksRequest(), timeout=10)
    finally:
        if submit.returncode is None:
            submit.kill()
            await submit.wait()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert submit.returncode == 0, err.decode()[-2000:]
    assert "SUCCEEDED" in out.decode() and "WAITED" in out.decode(), out.decode()
    assert [t.state for t in listed.tasks] == [task_pb2.TASK_STATE_SUCCEEDED]
