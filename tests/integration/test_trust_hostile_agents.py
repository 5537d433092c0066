"""An agent inside the mesh answers with what no database column can hold: its step fails with a reason,
and the task ends, instead of staying RUNNING forever because the step's end could never be written."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from agentmesh._errors import FailedPreconditionError
from agentmesh._settings import Settings
from agentmesh.agent import Agent, AgentInfo, AgentRuntime, ModelUsage, SkillContext, skill
from agentmesh.services.planner import engine
from agentmesh.v1 import task_pb2
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import PlannerMesh

pytestmark = pytest.mark.asyncio


class Anything(BaseModel):
    model_config = {"extra": "allow"}


class Hostile(Agent):
    """Answers with NUL characters, in its output and in its errors."""

    card = AgentInfo(
        name="hostile",
        namespace="testing",
        version="1.0.0",
        purpose="testing",
        description="Answers with what cannot be stored.",
        owner="red-team",
    )

    @skill(description="An output with a NUL character in a value and in a key")
    async def nul_output(self, request: Anything, ctx: SkillContext) -> Anything:
        return Anything(**{"text": "refund\x00approved", "k\x00": 1})

    @skill(description="An output as asked, and a model usage whose name holds a NUL character")
    async def nul_usage(self, request: Anything, ctx: SkillContext) -> Anything:
        ctx.record_model_usage(ModelUsage("triage\x00model", "1\x00", 0.01))
        return Anything(text="ok")

    @skill(description="An error whose message holds a NUL character")
    async def nul_error(self, request: Anything, ctx: SkillContext) -> Anything:
        raise FailedPreconditionError("the order \x00 cannot be found")


PLAYBOOK = """
name: {skill}
defaults: {{agent: {{names: [testing/hostile]}}, timeout: 10, retry: {{max_attempts: 2, initial_backoff: 0.05}}}}
steps:
  - {{id: only, skill: {skill}, input: {{}}}}
"""


async def _ended(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity, *skills: str
) -> dict[str, task_pb2.Task]:
    """Each skill of the hostile agent run as a one-step task, as the task ended (they stayed RUNNING on
    PostgreSQL before their fixes)."""
    issue_identity("agent", "testing/hostile")
    agent = Hostile(mesh_settings.replace(lease_ttl=10.0))
    async with AgentRuntime(agent, port=0, registry_address=planner_mesh.registry.address) as runtime:
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        for name in skills:
            planner_mesh.add_playbook(PLAYBOOK.format(skill=name))
        tasks = {name: await planner_mesh.submit(name, {}, playbook=name) for name in skills}
        return {name: await planner_mesh.wait(task.task_id, within=15.0) for name, task in tasks.items()}


async def test_an_output_or_error_that_cannot_be_stored_fails_the_step_and_the_task_ends(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    expected = {
        "nul_output": "output holds a NUL character",
        "nul_error": "the order \ufffd cannot be found",
    }
    for name, done in (await _ended(planner_mesh, mesh_settings, issue_identity, *expected)).items():
        assert done.state == task_pb2.TASK_STATE_FAILED, (name, done.state, done.error)
        assert expected[name] in done.error, (name, done.error)
        explained = await planner_mesh.explain(done.task_id)
        assert explained.attempts[-1].error_message.startswith(expected[name].split(" \ufffd")[0]), name


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ({"score": float("nan")}, "a non-finite number"),  # a non-SDK agent can send NaN in a Struct
        ({"scores": [1.0, float("inf")]}, "a non-finite number"),
        ({"nested": {"k\x00": 1}}, "a NUL character"),
    ],
)
async def test_an_output_no_json_column_holds_is_rejected_by_the_output_check(output: dict, reason: str) -> None:
    from agentmesh.services.planner.rules import OutputRejected, check_output

    with pytest.raises(OutputRejected, match=reason):
        check_output(output, size=10, max_bytes=1_000, schema=None, rule="")
    check_output({"text": "a backslash then u0000: \\u0000"}, size=10, max_bytes=1_000, schema=None, rule="")


@pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True)
async def test_a_model_usage_that_cannot_be_stored_does_not_wedge_the_task(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    done = (await _ended(planner_mesh, mesh_settings, issue_identity, "nul_usage"))["nul_usage"]
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done.error


@pytest.mark.parametrize("migrated_database_url", ["postgres"], indirect=True)
async def test_a_reply_the_database_refuses_fails_its_step_instead_of_wedging_the_task(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity: IssueIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the planner's own checks miss: here the model name's NUL is let through to PostgreSQL.
    monkeypatch.setattr(engine, "fit_text", lambda text, width: text)
    done = (await _ended(planner_mesh, mesh_settings, issue_identity, "nul_usage"))["nul_usage"]
    assert done.state == task_pb2.TASK_STATE_FAILED
    assert "FAILED_PRECONDITION" in done.error and "cannot be stored" in done.error
    assert "\x00" not in done.error
