"""A running mesh with its console, for the console's tests: registry, planner, the test Worker agent, a
gateway in front of them and the console in front of the gateway (HTTPS with the gateway's certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from agentmesh._settings import Settings
from agentmesh.agent import Agent, AgentInfo, AgentRuntime, SkillContext, skill
from agentmesh.services.gateway.console.process import ConsoleServer
from agentmesh.v1 import task_pb2, task_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import FINAL, PlannerMesh
from tests.integration.planner_agents import TextIn, TextOut, Worker

CHAIN = """
name: console_chain
match: [console]
defaults: {agent: {names: [testing/worker]}, timeout: 10, retry: {max_attempts: 3, initial_backoff: 0.05}}
steps:
  - {id: first, skill: shout, input: {text: "${task.input.text}"}}
  - {id: left, skill: shout, depends_on: [first], input: {text: "left ${steps.first.output.text}"}}
  - {id: right, skill: shout, depends_on: [first], input: {text: "right ${task.input.text}"}}
  - {id: last, skill: shout, depends_on: [left, right], input: {text: "${steps.left.output.text} + ${steps.right.output.text}"}}
output: {answer: "${steps.last.output.text}"}
"""

GUARDED = """
name: console_guarded
defaults: {agent: {names: [testing/worker]}, timeout: 10}
steps:
  - {id: gated, skill: shout, input: {text: "${task.input.text}"}, approval: {reason: "a human looks first", timeout: 60}}
"""

PARENT = """
name: console_parent
defaults: {agent: {names: [testing/worker]}, timeout: 20, retry: {max_attempts: 3, initial_backoff: 0.2}}
steps:
  - {id: spawn, skill: spawn, input: {playbook: console_chain, count: 2}}
"""

HOSTILE_DESCRIPTION = (
    '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">Ignore the markup'
)


class Hostile(Agent):
    """An agent whose card is hostile markup: the console must show it as text."""

    card = AgentInfo(
        name="hostile",
        namespace="testing",
        version="0.9.0",
        purpose="xss-probe",
        description=HOSTILE_DESCRIPTION,
        owner="<i>mallory</i>",
    )

    @skill(description="Echo <script>alert(1)</script>")
    async def echo(self, request: TextIn, ctx: SkillContext) -> TextOut:
        return TextOut(text=request.text)


@dataclass
class ConsoleMesh:
    """The running mesh: ``url`` of the console, ``gateway`` (tests.fixtures.gateway.GatewayUnderTest)."""

    planner_mesh: PlannerMesh
    gateway: Any
    console: ConsoleServer
    settings: Settings
    registry_address: str
    runtimes: list[AgentRuntime] = field(default_factory=list)

    @property
    def url(self) -> str:
        """https://127.0.0.1:PORT"""
        return f"https://127.0.0.1:{self.console.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the mesh CA (the console serves the gateway's certificate)."""
        return ssl.create_default_context(cafile=str(self.settings.home / "ca" / "ca.pem"))

    async def add_agent(self, agent: Agent) -> AgentRuntime:
        """Start and register another agent (stopped with the mesh)."""
        runtime = AgentRuntime(agent, port=0, registry_address=self.registry_address)
        await runtime.__aenter__()
        self.runtimes.append(runtime)
        async with asyncio.timeout(15):
            await runtime.wait_registered()
        return runtime

    async def set_weights(self, namespace: str, name: str, weights: dict[str, int]) -> None:
        """SetRoutingPolicy as the ops client, straight at the registry (the gateway serves registry reads only)."""
        async with self.planner_mesh.registry.client("client", "ops") as client:
            await client.set_routing(namespace, name, weights, reason="console test", deadline=10)

    async def submit(self, playbook: str, text: str) -> str:
        """Submit through the gateway as alice; the task id."""
        request = task_pb2.SubmitTaskRequest(goal=f"console {text}", playbook=playbook)
        request.input.update({"text": text})
        async with self.gateway.channel() as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            reply = await stub.SubmitTask(request, metadata=self.gateway.bearer(), timeout=10)
        return str(reply.task.task_id)

    async def wait(
        self, task_id: str, states: tuple[int, ...] = FINAL, within: float = 20.0
    ) -> task_pb2.Task:
        """Poll GetTask through the gateway until the task is in one of ``states``."""
        async with self.gateway.channel() as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            async with asyncio.timeout(within):
                while True:
                    try:
                        task = (
                            await stub.GetTask(
                                task_pb2.GetTaskRequest(task_id=task_id),
                                metadata=self.gateway.bearer(),
                                timeout=10,
                            )
                        ).task
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                    else:
                        if task.state in states:
                            return task
                    await asyncio.sleep(0.05)


@pytest.fixture
async def console_mesh(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity, start_gateway: Any
) -> AsyncIterator[ConsoleMesh]:
    """Registry, planner, the Worker agent, a gateway and the console on a free port."""
    issue_identity("agent", "testing/worker")
    issue_identity("agent", "testing/hostile")
    # The default lease (a loaded machine must not expire it mid-test); sub-tasks go to the test planner.
    agent = Worker(mesh_settings.replace(planner_address=planner_mesh.planner.address))
    async with AgentRuntime(agent, port=0, registry_address=planner_mesh.registry.address) as runtime:
        async with asyncio.timeout(15):
            await runtime.wait_registered()
        planner_mesh.add_playbook(CHAIN)
        planner_mesh.add_playbook(GUARDED)
        planner_mesh.add_playbook(PARENT)
        gateway = await start_gateway(
            planner=planner_mesh.planner.address,
            database_url=planner_mesh.database_url,
            registry_address=planner_mesh.registry.address,
        )
        console = ConsoleServer.for_gateway(gateway.settings, gateway.server, port=0)
        await console.start()
        mesh = ConsoleMesh(planner_mesh, gateway, console, gateway.settings, planner_mesh.registry.address)
        try:
            yield mesh
        finally:
            await console.stop()
            for extra in reversed(mesh.runtimes):
                with contextlib.suppress(Exception):
                    await extra.__aexit__(None, None, None)
