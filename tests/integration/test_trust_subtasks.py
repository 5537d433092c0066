"""An agent submits a sub-task only with the step token of a step of the parent it runs right now, and the
sub-task acts in the parent's world: it cannot answer in another user's (or tenant's) conversation."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agentmesh._channel import create_channel
from agentmesh._errors import from_rpc_error
from agentmesh.v1 import conversation_pb2, conversation_pb2_grpc, task_pb2
from tests.fixtures.planner import PlannerMesh
from tests.integration.test_planner import LEAF, worker  # noqa: F401  (a fixture)

pytestmark = pytest.mark.asyncio


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), from_rpc_error(caught.value).reason


@pytest.mark.usefixtures("worker")
async def test_a_step_token_opens_sub_tasks_of_its_running_step_in_its_own_conversation_only(
    planner_mesh: PlannerMesh, request: pytest.FixtureRequest
) -> None:
    planner_mesh.add_playbook(LEAF)
    td = planner_mesh.settings.trust_domain
    bob = planner_mesh.acting_for("bob", "globex", ["conversations:read", "conversations:write"])
    ops = planner_mesh.stub()
    running = await planner_mesh.submit("slow", {}, playbook="slow")  # its step `wait` runs for 20 s
    done = await planner_mesh.submit("leaf", {}, playbook="leaf")
    await planner_mesh.wait(done.task_id)
    async with asyncio.timeout(10):
        await request.getfixturevalue("worker").started.wait()  # the worker runs `wait` now

    worker_id = f"spiffe://{td}/agent/testing/worker"

    def token(task_id: str, step_id: str) -> str:  # what the planner hands the worker with each Invoke
        return planner_mesh.planner.engine.tokens.mint(
            audience=worker_id, subject="alice", tenant="acme", scopes=[], task_id=task_id, step_id=step_id
        )

    def sub_task(parent: str, delegation: str, conversation_id: str = "") -> task_pb2.SubmitTaskRequest:
        return task_pb2.SubmitTaskRequest(
            goal="look it up",
            playbook="leaf",
            parent_task_id=parent,
            delegation_token=delegation,
            conversation_id=conversation_id,
        )

    as_worker = planner_mesh.stub("agent", "testing/worker")
    async with create_channel(planner_mesh.planner.address, planner_mesh.settings, kind="client", name="ops") as ch:
        conversations = conversation_pb2_grpc.ConversationServiceStub(ch)
        created = await conversations.CreateConversation(
            conversation_pb2.CreateConversationRequest(title="bob's refund"), metadata=bob, timeout=5
        )
        bobs = created.conversation.conversation_id
        wait_token = token(running.task_id, "wait")

        refusals = {
            "into another tenant's conversation": sub_task(running.task_id, wait_token, bobs),
            "after its step ended": sub_task(done.task_id, token(done.task_id, "leaf")),
            "for a step that has not started": sub_task(running.task_id, token(running.task_id, "after")),
            "under another task than its token's": sub_task(done.task_id, wait_token),
        }
        reasons = {name: await _refused(as_worker.SubmitTask(r, timeout=10)) for name, r in refusals.items()}
        assert reasons == {
            "into another tenant's conversation": (grpc.StatusCode.PERMISSION_DENIED, "SUBTASK_CONVERSATION"),
            "after its step ended": (grpc.StatusCode.PERMISSION_DENIED, "SUBTASK_STEP_NOT_RUNNING"),
            "for a step that has not started": (grpc.StatusCode.PERMISSION_DENIED, "SUBTASK_STEP_NOT_RUNNING"),
            "under another task than its token's": (grpc.StatusCode.PERMISSION_DENIED, "TOKEN_WRONG_TASK"),
        }
        # Nothing was stored: no task joined bob's conversation, which is still at version 0.
        listed = await ops.ListTasks(task_pb2.ListTasksRequest(conversation_id=bobs), timeout=5)
        assert list(listed.tasks) == []
        got = await conversations.GetConversation(
            conversation_pb2.GetConversationRequest(conversation_id=bobs), metadata=bob, timeout=5
        )
        assert got.conversation.version == 0

        # The running step's own sub-task (in the parent's conversation: none) is accepted.
        accepted = (await as_worker.SubmitTask(sub_task(running.task_id, wait_token), timeout=10)).task
        assert (accepted.parent_task_id, accepted.parent_step_id) == (running.task_id, "wait")
    await ops.CancelTask(task_pb2.CancelTaskRequest(task_id=running.task_id), timeout=10)

