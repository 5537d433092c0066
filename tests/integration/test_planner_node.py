"""Any language can use the planner: a Node.js client (@grpc/grpc-js, protos loaded at run time) submits a task
over mTLS, waits for it, and reads its explanation: the plan, who was chosen and why, every substitution and
every attempt."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import PlannerMesh
from tests.integration.planner_agents import Worker

TASK_CLIENT = Path(__file__).resolve().parents[1] / "node" / "task_client.js"

TWO_STEPS = """
name: two-steps
defaults: {agent: {names: [testing/worker]}, timeout: 10}
steps:
  - {id: loud, skill: shout, input: {text: "${task.input.text}"}}
  - {id: echo, skill: echo_any, depends_on: [loud], input: {said: "${steps.loud.output.text}"}}
output: {reply: "${steps.echo.output.said}"}
"""


async def test_a_node_client_submits_a_task_and_reads_its_explanation(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    node = shutil.which("node")
    assert node, "Node.js is missing: `make system-deps` installs it"
    assert (TASK_CLIENT.parents[1] / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make node-deps`"
    issue_identity("agent", "testing/worker")
    issue_identity("client", "ops")
    async with AgentRuntime(Worker(mesh_settings.replace(lease_ttl=2.0)), port=0,
                            registry_address=planner_mesh.registry.address) as runtime:
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        planner_mesh.add_playbook(TWO_STEPS)
        certs = mesh_settings.home / "certs"
        process = await asyncio.create_subprocess_exec(
            node, str(TASK_CLIENT), planner_mesh.planner.address, str(mesh_settings.home / "ca" / "ca.pem"),
            str(certs / "client-ops.pem"), str(certs / "client-ops-key.pem"),
            "two-steps", json.dumps({"text": "where is my parcel"}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout.decode().strip().splitlines()[-1])
    assert seen["sameTaskOnRetry"] is True
    assert seen["state"] == "TASK_STATE_SUCCEEDED"
    assert seen["output"] == {"reply": "WHERE IS MY PARCEL"}
    assert seen["plan"]["playbook"] == "two-steps" and len(seen["plan"]["contentHash"]) == 64
    assert seen["plan"]["steps"] == ["loud", "echo"]
    assert {c["step"] for c in seen["collaborators"]} == {"loud", "echo"}
    assert all(c["chosen"] == "testing/worker@1.0.0" and c["reason"] for c in seen["collaborators"])
    assert {"step": "loud", "template": "${task.input.text}", "value": "where is my parcel"} in seen["substitutions"]
    assert {"step": "echo", "template": "${steps.loud.output.text}", "value": "WHERE IS MY PARCEL"} in seen[
        "substitutions"
    ]
    assert [(a["step"], a["state"]) for a in seen["attempts"]] == [
        ("loud", "STEP_STATE_SUCCEEDED"),
        ("echo", "STEP_STATE_SUCCEEDED"),
    ]
    assert seen["missing"] == "NOT_FOUND"
