"""A port already taken is refused, not shared: gRPC's default SO_REUSEPORT let a second server bind a port in
use (a second `agentmesh up` reported "mesh ready" on the first mesh's answers while its own Triton looped on
"Socket already in use"), and the kernel split connections between the two."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentmesh._errors import FailedPreconditionError
from agentmesh._server import MeshServer
from agentmesh._settings import Settings
from agentmesh.inference import free_port
from tests.fixtures.certs import IssueIdentity, start_serving

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]


async def test_a_second_server_on_a_port_in_use_is_refused_with_the_port_named(
    mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    issue_identity("service", "registry")
    issue_identity("client", "ops")
    first = MeshServer(name="registry", settings=mesh_settings, port=0, services=[])
    await start_serving(first, mesh_settings)
    try:
        second = MeshServer(name="registry", settings=mesh_settings, port=first.port, services=[])
        with pytest.raises(FailedPreconditionError) as refused:
            await second.start()
        assert refused.value.reason == "PORT_IN_USE"
        assert refused.value.message.startswith(f"the registry cannot listen on 127.0.0.1:{first.port}: the port is in use")
        assert refused.value.message.endswith("(AGENTMESH_REGISTRY_PORT)")
    finally:
        await first.stop(grace=0.1)


async def test_agentmesh_up_with_a_port_in_use_stops_at_once_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
        env.update(
            {
                "AGENTMESH_HOME": str(tmp_path / "mesh"),
                "AGENTMESH_REGISTRY_PORT": str(port),
                **{f"AGENTMESH_{name}_PORT": str(free_port()) for name in ("PLANNER", "GATEWAY", "TRITON")},
            }
        )
        started = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agentmesh.cli", "up", "--agents", "triage", "--startup-timeout", "20"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 15
    assert (
        f"agentmesh up failed: port {port} (registry, AGENTMESH_REGISTRY_PORT) on 127.0.0.1 is already in use: "
        "is a mesh already up?" in done.stderr
    ), done.stderr[-2000:]
    assert not (tmp_path / "mesh" / "logs").exists()  # no process was started


async def test_a_console_port_in_use_is_warned_of_and_its_url_not_printed(tmp_path: Path) -> None:
    from agentmesh.cli._mesh import LocalMesh

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {f"{name}_port": free_port() for name in ("registry", "planner", "gateway", "triton")}
        settings = Settings(home=tmp_path, console_port=taken.getsockname()[1], **ports)
        mesh = LocalMesh(agents=[], settings=settings)
        mesh._check_ports()  # the mesh's own ports are free: it may start
    assert not mesh._console_free  # `agentmesh up` does not print the URL of another mesh's console
