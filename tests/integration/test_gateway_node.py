"""Any language reaches the mesh through the gateway: a Node.js client (@grpc/grpc-js) with TLS and a JWT."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_CLIENT = Path(__file__).resolve().parents[1] / "node" / "gateway_client.js"


async def run_node_client(gateway: Any, token: str, mode: str = "submit", **env: str) -> dict[str, Any]:
    """Run tests/node/gateway_client.js against ``gateway`` and return its JSON line."""
    import os

    node = shutil.which("node")
    assert node, "Node.js is missing: `make system-deps` installs it"
    assert (NODE_CLIENT.parents[1] / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make node-deps`"
    ca = Path(gateway.settings.home) / "ca" / "ca.pem"
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_CLIENT), gateway.address, str(ca), token, mode,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    return dict(json.loads(stdout.decode().strip().splitlines()[-1]))


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_a_node_client_submits_through_the_gateway_with_tls_and_a_jwt(
    start_gateway: Any, recording_planner: Any, migrated_database_url: str
) -> None:
    gateway = await start_gateway(planner=recording_planner.address, database_url=migrated_database_url)
    reply = await run_node_client(gateway, gateway.token(["tasks:submit", "tasks:read"], subject="node-user"))
    assert reply["health"] == "SERVING"
    assert reply["withoutToken"] == "UNAUTHENTICATED"
    assert reply["taskId"]
    # What reached the planner: the ticket, redacted, on behalf of the token's subject.
    submitted = [c for c in recording_planner.calls if c.method == "SubmitTask"]
    assert len(submitted) == 1
    assert submitted[0].request.input["email"] == "[email]"
    assert reply["submittedInput"]["fields"]["email"]["stringValue"] == "[email]"
