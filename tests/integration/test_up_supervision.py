"""``agentmesh up`` supervises its children: Triton killed with SIGKILL comes back, the mesh stays up.

The agents are not restarted: they report NOT_SERVING while Triton is away (logged at WARNING with the
dependency's name) and SERVING again once it is back (INFO), on the same registration.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from agentmesh._registry_client import RegistryClient
from agentmesh._settings import Settings
from agentmesh.v1 import agent_pb2
from tests.integration.test_agent_cli import free_port

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".agentmesh" / "models"  # the cached MiniLM export (tests/fixtures/triton.py fills it)


async def _wait_for(lines: list[str], pattern: str, within: float, what: str) -> re.Match[str]:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        for line in lines:
            if found := re.search(pattern, line):
                return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {within}s:\n" + "\n".join(lines[-40:]))


def _log(home: Path, name: str) -> list[str]:
    path = home / "logs" / f"{name}.log"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


@pytest.mark.timeout(600)
async def test_triton_killed_under_up_is_restarted_and_the_agents_recover_in_place(
    tmp_path: Path, triton_url: str  # the session Triton fixture fills the model cache first
) -> None:
    home = tmp_path / "mesh"
    home.mkdir()
    (home / "models").symlink_to(MODELS)
    ports = {name: free_port() for name in ("triton", "registry", "planner", "gateway")}
    env = {
        **os.environ,
        "AGENTMESH_HOME": str(home),
        "AGENTMESH_LOG_FORMAT": "text",
        "AGENTMESH_READINESS_INTERVAL": "0.5",
        "AGENTMESH_LEASE_TTL": "3",
        **{f"AGENTMESH_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    env.pop("AGENTMESH_TRITON_URL", None)
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli", "up", "--agents", "triage",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []

    async def read() -> None:
        assert up.stderr is not None
        async for raw in up.stderr:
            lines.append(raw.decode(errors="replace").rstrip())

    reader = asyncio.create_task(read())
    try:
        await _wait_for(lines, "mesh ready", 300, "the mesh starting")
        assert f"Triton 127.0.0.1:{ports['triton']}" in "\n".join(lines)  # AGENTMESH_TRITON_PORT honoured
        # It says how to call the mesh: a dev token command and a grpcurl line through the gateway.
        await _wait_for(lines, r"grpcurl -cacert \S+ -H .*localhost:" + str(ports["gateway"]), 30, "how to call it")
        assert any("agentmesh token issue" in line for line in lines)
        triton_pid = int((await _wait_for(_log(home, "triton"), r"triton ready: .*\(pid (\d+)\)", 5, "pid")).group(1))
        settings = Settings(home=home, trust_domain="agentmesh.local", registry_address=f"127.0.0.1:{ports['registry']}")
        async with RegistryClient(settings, kind="client", name="ops") as ops:
            before = (await ops.get_agent("support", "triage")).instances[0]
            assert before.state == agent_pb2.SERVING_STATE_SERVING

            os.kill(triton_pid, signal.SIGKILL)
            await _wait_for(lines, r"WARNING\s+triton exited with code", 30, "the crash being reported")
            await _wait_for(lines, r"INFO\s+triton restarted", 30, "the restart being reported")

            async def state() -> int:
                instances = (await ops.get_agent("support", "triage")).instances
                return instances[0].state if instances else agent_pb2.SERVING_STATE_UNSPECIFIED

            deadline = asyncio.get_running_loop().time() + 120
            while await state() != agent_pb2.SERVING_STATE_SERVING:
                assert asyncio.get_running_loop().time() < deadline, "the agent did not serve again"
                await asyncio.sleep(0.2)
            after = (await ops.get_agent("support", "triage")).instances[0]
        assert after.instance_id == before.instance_id  # the same agent process and registration
        assert up.returncode is None, "\n".join(lines)
        assert not any("agent-triage exited" in line for line in lines)
        agent_log = "\n".join(_log(home, "agent-triage"))
        assert re.search(r"WARNING .*dependency triton at \S+ is down", agent_log), agent_log[-3000:]
        assert re.search(r"INFO .*dependency triton at \S+ is back", agent_log), agent_log[-3000:]
        assert agent_log.count("registered instance") == 1
        registry_log = "\n".join(_log(home, "registry"))
        assert "alembic" not in registry_log  # no per-poll log noise
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(60):
                    await up.wait()
            except TimeoutError:
                up.kill()
                await up.wait()
        reader.cancel()
    assert up.returncode == 0
