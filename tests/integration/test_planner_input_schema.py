"""A task whose input its playbook's input schema rejects is refused at submission (INVALID_ARGUMENT naming the
field), whether the playbook was named or matched to the goal, and nothing is stored. It used to be accepted
and then fail at its first step ("invalid input for skill 'classify_ticket': input.text: Field required")."""

from __future__ import annotations

import grpc
import pytest

from agentmesh._errors import from_rpc_error
from agentmesh.v1 import task_pb2
from tests.fixtures.planner import PlannerMesh

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_input_that_does_not_fit_the_playbook_is_invalid_argument_and_stores_nothing(
    planner_mesh: PlannerMesh,
) -> None:
    cases = [
        # The README's example call: the support playbook matched by 'refund', the ticket not under "ticket".
        ("My blender arrived broken, I want a refund", {"subject": "Broken blender", "text": "It is cracked."}, "",
         "playbook 'support' matched the goal, but the input does not match its input schema at input: "
         "'ticket' is a required property (give the input it asks for, or name another playbook)", "input"),
        ("Answer a ticket", {"ticket": {"subject": "no text"}}, "support",
         "the input does not match playbook 'support''s input schema at input.ticket: 'text' is a required property",
         "input.ticket"),
    ]  # fmt: skip
    for goal, data, playbook, message, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await planner_mesh.submit(goal, data, playbook=playbook)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == message
        assert from_rpc_error(refused.value).metadata["field"] == field
    listed = await planner_mesh.stub().ListTasks(task_pb2.ListTasksRequest(), timeout=10)
    assert list(listed.tasks) == []


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_a_message_asking_for_such_a_task_is_refused_before_it_is_stored(planner_mesh: PlannerMesh) -> None:
    from agentmesh._channel import create_channel
    from agentmesh.v1 import conversation_pb2, conversation_pb2_grpc

    channel = create_channel(planner_mesh.planner.address, planner_mesh.settings, kind="client", name="ops")
    planner_mesh.channels.append(channel)
    conversations = conversation_pb2_grpc.ConversationServiceStub(channel)
    created = await conversations.CreateConversation(conversation_pb2.CreateConversationRequest(title="t"), timeout=10)
    cid = created.conversation.conversation_id
    task = task_pb2.TaskTemplate(playbook="support")
    task.input.update({"ticket": {"subject": "no text"}})
    send = conversation_pb2.SendMessageRequest(conversation_id=cid, expected_version=0, text="help", task=task)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await conversations.SendMessage(send, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "playbook 'support''s input schema at input.ticket: 'text' is a required property" in (refused.value.details() or "")
    stored = await conversations.GetConversation(conversation_pb2.GetConversationRequest(conversation_id=cid), timeout=10)
    assert stored.conversation.version == 0 and list(stored.messages) == []  # no message without its task
