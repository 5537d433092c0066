"""The planner reports every call's outcome to the registry: a canary version that fails the planner's steps is
rolled back to weight 0, and the tasks after that go to the stable version only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentmesh._errors import InternalError
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime, SkillContext, skill
from agentmesh.v1 import task_pb2
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import PlannerMesh
from tests.integration.planner_agents import TextIn, TextOut, Worker

pytestmark = pytest.mark.asyncio

ONE = """
name: canary_one
defaults: {agent: {names: [testing/worker]}, timeout: 10, retry: {max_attempts: 1}}
steps:
  - {id: only, skill: shout, input: {text: "${task.input.text}"}}
"""


class BrokenCanary(Worker):
    """Version 1.1.0 of the worker, whose shout is broken."""

    card = Worker.card.model_copy(update={"version": "1.1.0"})

    @skill(description="Shout the text back in capitals")
    async def shout(self, request: TextIn, ctx: SkillContext) -> TextOut:
        self._count(ctx)
        raise InternalError("the canary's shout is broken")


@pytest.fixture
async def worker(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity
) -> AsyncIterator[Worker]:
    """Version 1.0.0 of the worker (stable)."""
    issue_identity("agent", "testing/worker")
    agent = Worker(mesh_settings.replace(lease_ttl=10.0, planner_address=planner_mesh.planner.address))
    async with AgentRuntime(agent, port=0, registry_address=planner_mesh.registry.address) as runtime:
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        planner_mesh.add_playbook(ONE)
        yield agent


@pytest.fixture
async def canary(planner_mesh: PlannerMesh, worker: Worker) -> AsyncIterator[BrokenCanary]:
    """Version 1.1.0 of the worker (the canary), same identity."""
    agent = BrokenCanary(worker.settings, instance="canary")
    async with AgentRuntime(agent, port=0, registry_address=planner_mesh.registry.address) as runtime:
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        yield agent


async def test_a_failing_canary_is_rolled_back_by_the_planners_reports(
    planner_mesh: PlannerMesh, worker: Worker, canary: BrokenCanary
) -> None:
    async with planner_mesh.registry.client("client", "ops") as ops:
        await ops.set_routing(
            "testing", "worker", {"1.0.0": 70, "1.1.0": 30}, max_error_rate=0.3, min_requests=4
        )
        states: list[int] = []
        # Bounded: the planner re-asks discovery every half second and each answer draws a version by weight, so
        # the canary gets its 30% within a few seconds of tasks.
        for n in range(300):
            task = await planner_mesh.submit("shout", {"text": f"hi {n}"}, playbook="canary_one")
            states.append((await planner_mesh.wait(task.task_id)).state)
            policy = await ops.get_routing("testing", "worker")
            if dict(policy.weights).get("1.1.0") == 0:
                break
        assert dict(policy.weights) == {"1.0.0": 70, "1.1.0": 0}, (len(states), len(canary.completed))
        assert "canary 1.1.0 rolled back to weight 0" in policy.reason
        assert sum(canary.completed.values()) >= 4  # the canary was called, and failed, before that
        assert task_pb2.TASK_STATE_FAILED in states
    # From now on every task goes to the stable version and succeeds.
    before = sum(canary.completed.values())
    for n in range(6):
        task = await planner_mesh.submit("shout", {"text": f"after {n}"}, playbook="canary_one")
        done = await planner_mesh.wait(task.task_id)
        assert done.state == task_pb2.TASK_STATE_SUCCEEDED and done.output["only"]["text"] == f"AFTER {n}"
    assert sum(canary.completed.values()) == before
