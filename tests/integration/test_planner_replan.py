"""Re-planning on real servers (SQLite and PostgreSQL): the agent of a step disappears mid-task, the step's
retries run out, and the planner goes on under plan version 2, which hands the step to its alternative.
Finished steps keep their outputs (nothing runs twice), and ExplainTask shows both versions and why.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import pytest
from rich.console import Console

from agentmesh._settings import Settings
from agentmesh.agent import AgentInfo, AgentRuntime
from agentmesh.cli._explain import render_explanation
from agentmesh.v1 import task_pb2
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import PlannerMesh
from tests.integration.planner_agents import Worker

HANDOVER = """
name: handover
defaults: {agent: {names: [testing/worker]}, timeout: 20, retry: {max_attempts: 2, initial_backoff: 0.1}}
steps:
  - {id: first, skill: slow, input: {label: "${task.input.text}", seconds: 0.5}}
  - {id: side, skill: slow, depends_on: [first], input: {label: side, seconds: 1.5}}
  - id: second
    description: The helper does it.
    skill: shout
    depends_on: [first]
    agent: {names: [testing/helper]}
    input: {text: "${steps.first.output.label}"}
    alternatives:
      - {description: the worker shouts instead, agent: {names: [testing/worker]}}
  - {id: third, skill: shout, depends_on: [second, side], input: {text: "${steps.second.output.text} again"}}
output: {text: "${steps.third.output.text}", side: "${steps.side.output.label}"}
"""


class Helper(Worker):
    """The same skills under another name: the agent that disappears."""

    card = AgentInfo(
        name="helper",
        namespace="testing",
        version="1.0.0",
        purpose="testing",
        description="Does small text jobs until it goes away.",
        owner="platform-team",
    )


@pytest.fixture
async def two_agents(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity
) -> AsyncIterator[tuple[Worker, Helper, AgentRuntime]]:
    """The worker and the helper, registered; the helper's runtime is the test's to stop."""
    issue_identity("agent", "testing/worker")
    issue_identity("agent", "testing/helper")
    settings = mesh_settings.replace(lease_ttl=10.0)
    worker, helper = Worker(settings), Helper(settings, instance="h")
    registry = planner_mesh.registry.address
    async with AgentRuntime(worker, port=0, registry_address=registry) as worker_runtime:
        helper_runtime = AgentRuntime(helper, port=0, registry_address=registry)
        await helper_runtime.start()
        try:
            async with asyncio.timeout(10):
                await asyncio.gather(worker_runtime.wait_registered(), helper_runtime.wait_registered())
            planner_mesh.add_playbook(HANDOVER)
            yield worker, helper, helper_runtime
        finally:
            await helper_runtime.stop(grace=0.5)


async def test_a_step_whose_agent_disappears_is_replanned_into_version_two_and_the_task_finishes(
    planner_mesh: PlannerMesh, two_agents: tuple[Worker, Helper, AgentRuntime]
) -> None:
    worker, helper, helper_runtime = two_agents
    task = await planner_mesh.submit("hand over", {"text": "hi"}, playbook="handover")
    # Mid-task: the first step runs, then the helper goes away before its step is called.
    async with asyncio.timeout(10):
        await worker.started.wait()
    await helper_runtime.stop(grace=0.5)

    done = await planner_mesh.wait(task.task_id, within=60)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done.error
    assert dict(done.output) == {"text": "HI AGAIN", "side": "side"}

    explanation = await planner_mesh.explain(task.task_id)
    first, second = explanation.plan_versions
    assert (first.version, second.version) == (1, 2)
    assert second.previous_plan_id == first.plan_id and explanation.plan.plan_id == second.plan_id
    assert first.content_hash != second.content_hash
    # Why: the step, what went wrong with its agent, and what version 2 does instead.
    assert "step second failed after 2 attempts" in second.reason
    assert "FAILED_PRECONDITION" in second.reason and "testing/helper" not in second.reason.split(";")[-1]
    assert "the worker shouts instead" in second.reason

    v1 = {s.step_id: s for s in first.steps}
    v2 = {s.step_id: s for s in second.steps}
    assert v1["second"].state == task_pb2.STEP_STATE_FAILED
    assert v1["third"].state == task_pb2.STEP_STATE_CANCELLED  # never started under version 1
    assert v1["second"].agent_query.visibility.names == ["testing/helper"]
    assert v2["second"].agent_query.visibility.names == ["testing/worker"]
    assert all(s.state == task_pb2.STEP_STATE_SUCCEEDED for s in second.steps)
    # Finished steps were carried into version 2 with their outputs, not re-run (the sibling that was still
    # running when the step failed too: the re-plan waited for it).
    assert v2["first"].output == v1["first"].output and v2["side"].output == v1["side"].output
    for step in ("first", "side", "second", "third"):
        assert worker.completed[f"{task.task_id}/{step}"] == 1, step
    assert not helper.completed
    # The replaced step has a key of its own and its attempts go on from the failed ones.
    assert v2["second"].idempotency_key == f"{task.task_id}/second/v2"
    assert v2["first"].idempotency_key == v1["first"].idempotency_key == f"{task.task_id}/first"
    attempts = [(a.attempt, a.state, a.agent.name) for a in explanation.attempts if a.step_id == "second"]
    assert attempts == [
        (1, task_pb2.STEP_STATE_FAILED, ""),
        (2, task_pb2.STEP_STATE_FAILED, ""),
        (3, task_pb2.STEP_STATE_SUCCEEDED, "worker"),
    ]
    assert [a.attempt for a in explanation.attempts if a.step_id in ("first", "side")] == [1, 1]

    # WatchTask told of both plans as they were made.
    stream = planner_mesh.stub().WatchTask(task_pb2.WatchTaskRequest(task_id=task.task_id), timeout=30)
    made = [e.plan.version async for e in stream if e.type == task_pb2.TASK_EVENT_TYPE_PLAN_CREATED]
    assert made == [1, 2]

    # `agentmesh explain` draws the current version and the one it replaced, with why.
    drawing = io.StringIO()
    render_explanation(Console(file=drawing, width=300), task_pb2.ExplainTaskResponse(explanation=explanation))
    text = drawing.getvalue()
    assert "plan v2 PLAYBOOK handover" in text and "earlier plan v1" in text and "failed: second" in text
    assert "the worker shouts instead" in text
