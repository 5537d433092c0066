"""The client commands against a mesh that is down, another mesh, or a wrong port: one readable line on stderr
naming what could not be reached and why, a non-zero exit code, no traceback and no gRPC core log lines."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.inference import free_port
from tests.fixtures.planner import PlannerMesh
from tests.fixtures.registry import RegistryReplica

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]


async def _agentmesh_out(home: Path, *argv: str, **env: str) -> tuple[int, str, str]:
    """Run the CLI in its own process; its exit code, stdout and stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH_", "GRPC_"))}
    environ.update({"AGENTMESH_HOME": str(home), **env})
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agentmesh.cli", *argv],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


async def _agentmesh(home: Path, *argv: str, **env: str) -> tuple[int, str]:
    """Run the CLI in its own process, as an operator does (the servers under test keep this loop); its exit
    code and stderr."""
    code, _, stderr = await _agentmesh_out(home, *argv, **env)
    return code, stderr


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    return stderr.strip()


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_nothing_listening_is_named_with_its_address_and_a_hint(registry: RegistryReplica) -> None:
    home, port = registry.settings.home, free_port()
    registry.issue_identity("client", "ops")
    for argv, what in (
        (["explain", "task-1", "--address", f"127.0.0.1:{port}"], "planner"),
        (["audit", "verify", "--address", f"127.0.0.1:{port}"], "planner"),
        (["submit", "hi", "--token", "t", "--gateway", f"127.0.0.1:{port}"], "gateway"),
        (["agents", "list", "--address", f"127.0.0.1:{port}"], "registry"),
    ):
        code, stderr = await _agentmesh(home, *argv, AGENTMESH_TRUST_DOMAIN=registry.settings.trust_domain)
        assert code == 1
        line = _one_line(stderr)
        assert f"cannot reach the {what} at 127.0.0.1:{port}: connection refused" in line, line
        assert "UNAVAILABLE, retry once it is up" in line and "failed to connect to all addresses" not in line


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_another_meshs_ca_and_a_wrong_port_are_told_apart(registry: RegistryReplica, tmp_path: Path) -> None:
    other = tmp_path / "other-mesh"
    for argv in (["certs", "init"], ["certs", "issue", "--kind", "client", "--name", "ops"]):
        assert (await _agentmesh(other, *argv))[0] == 0
    code, stderr = await _agentmesh(other, "agents", "list", "--address", registry.address)
    assert code == 1
    line = _one_line(stderr)  # gRPC core's "Handshake failed" INFO lines are not printed around it
    assert f"cannot reach the registry at {registry.address}: its TLS certificate is not signed by the mesh CA " in line
    assert "another mesh's, or a wrong AGENTMESH_HOME?" in line

    registry.issue_identity("client", "ops")
    env = {"AGENTMESH_TRUST_DOMAIN": registry.settings.trust_domain}
    code, stderr = await _agentmesh(registry.settings.home, "audit", "list", "--address", registry.address, **env)
    assert code == 1
    assert "the server there is not the planner (its certificate names another); is the port right?" in _one_line(stderr)


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_bad_input_and_an_expired_wait_are_one_line(planner_mesh: PlannerMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    planner_mesh.registry.issue_identity("client", "ops")
    planner_mesh.add_playbook(
        "name: stuck\n"
        "defaults: {agent: {names: [testing/nobody]}, timeout: 5, retry: {max_attempts: 5, initial_backoff: 2.0}}\n"
        "steps:\n  - {id: one, skill: slow, input: {}}\n"
    )
    home = planner_mesh.settings.home
    env = {"AGENTMESH_TRUST_DOMAIN": planner_mesh.settings.trust_domain, "AGENTMESH_PLANNER_ADDRESS": planner_mesh.planner.address}
    code, stderr = await _agentmesh(home, "submit", "x", "--input", "@does-not-exist.json", **env)
    assert code == 1 and _one_line(stderr) == "agentmesh submit: --input @does-not-exist.json: cannot read it: No such file or directory"
    code, stderr = await _agentmesh(home, "submit", "x", "--input", "[1, 2]", **env)
    assert code == 1 and _one_line(stderr) == "agentmesh submit: --input must be a JSON object ({...}), not a list"

    code, stderr = await _agentmesh(home, "submit", "stuck", "--playbook", "stuck", "--timeout", "1", **env)
    assert code == 1
    line = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr and line.startswith("agentmesh submit: task task-"), stderr
    assert "is still RUNNING after 1s (--timeout); it goes on running: `agentmesh explain task-" in line, line


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_health_says_why_a_server_is_unreachable(registry: RegistryReplica) -> None:
    home, port = registry.settings.home, free_port()
    registry.issue_identity("client", "ops")
    env = {"AGENTMESH_TRUST_DOMAIN": registry.settings.trust_domain}
    assert await _agentmesh_out(home, "health", registry.address, **env) == (0, "SERVING\n", "")
    code, out, err = await _agentmesh_out(home, "health", f"127.0.0.1:{port}", **env)
    assert (code, out) == (1, "UNREACHABLE\n")  # what a container probe reads
    assert _one_line(err).startswith(f"agentmesh health: cannot reach the server at 127.0.0.1:{port}: connection refused")


async def test_an_address_grpc_would_bend_is_refused_before_dialling(tmp_path: Path) -> None:
    # gRPC dials 443 for a missing port and wraps 99999 to 34463: the operator reached something else.
    for argv, line in (
        (["explain", "t", "--address", "127.0.0.1:99999"], "--address '127.0.0.1:99999'"),
        (["audit", "list", "--address", "127.0.0.1"], "--address '127.0.0.1'"),
        (["submit", "x", "--token", "t", "--gateway", "localhost"], "--gateway 'localhost'"),
    ):
        code, stderr = await _agentmesh(tmp_path, *argv)
        assert code == 1
        assert _one_line(stderr).endswith(f": {line} is not HOST:PORT with a port from 1 to 65535"), stderr
    code, stderr = await _agentmesh(tmp_path, "explain", "t", AGENTMESH_PLANNER_ADDRESS="planner")
    assert _one_line(stderr).endswith(": AGENTMESH_PLANNER_ADDRESS 'planner' is not HOST:PORT with a port from 1 to 65535")
