"""``ConversationService`` over gRPC: translate protos to :class:`Conversations` calls and back, nothing else."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from agentmesh import security
from agentmesh._errors import InvalidArgumentError
from agentmesh.agent import struct_to_dict
from agentmesh.security import DelegationVerifier, TokenKind
from agentmesh.services.planner.conversation_rules import MAX_DATA_BYTES, Caller
from agentmesh.services.planner.conversations import Conversations, TaskRequest
from agentmesh.services.planner.conversations_store import ConversationRecord, MessageRecord
from agentmesh.v1 import conversation_pb2, conversation_pb2_grpc

__all__ = ["ConversationServicer", "conversation_proto", "message_proto"]

_ROLE_NAMES = {
    conversation_pb2.MESSAGE_ROLE_USER: "USER",
    conversation_pb2.MESSAGE_ROLE_AGENT: "AGENT",
    conversation_pb2.MESSAGE_ROLE_SYSTEM: "SYSTEM",
}
_ROLE_VALUES = {name: value for value, name in _ROLE_NAMES.items()}


# Where the gateway forwards the end user's delegation token.
DELEGATION_METADATA = "x-agentmesh-delegation"


def _timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def conversation_proto(record: ConversationRecord) -> conversation_pb2.Conversation:
    """The wire form of a conversation."""
    return conversation_pb2.Conversation(
        conversation_id=record.conversation_id,
        title=record.title,
        version=record.version,
        labels=record.labels,
        owner=record.owner,
        on_behalf_of=record.on_behalf_of,
        tenant=record.tenant,
        create_time=_timestamp(record.created_at),
        update_time=_timestamp(record.updated_at),
    )


def message_proto(record: MessageRecord) -> conversation_pb2.ConversationMessage:
    """The wire form of a message."""
    message = conversation_pb2.ConversationMessage(
        message_id=record.message_id,
        version=record.version,
        role=_ROLE_VALUES[record.role],
        author=record.author,
        on_behalf_of=record.on_behalf_of,
        text=record.text,
        task_id=record.task_id or "",
        create_time=_timestamp(record.created_at),
        parent_version=record.parent_version,
        hidden=record.hidden,
        rolled_back_to_version=record.rolled_back_to or 0,
    )
    if record.data is not None:
        message.data.update(record.data)
    return message


def _role(value: conversation_pb2.MessageRole.ValueType) -> str | None:
    """The role named by the request; None (the caller's own role) when unset."""
    if value == conversation_pb2.MESSAGE_ROLE_UNSPECIFIED:
        return None
    if value not in _ROLE_NAMES:
        raise InvalidArgumentError(f"role {value} is not a MessageRole", field="role")
    return _ROLE_NAMES[value]


def _data(request: Any, field: str = "data") -> dict[str, Any] | None:
    if not request.HasField(field):
        return None
    data: struct_pb2.Struct = getattr(request, field)
    # A Struct's encoding is at most ~6x its JSON (a list of zeros), so one this big is over the JSON bound for
    # sure: refused before it is turned into Python values, which costs ~0.2 s of event loop per megabyte.
    if data.ByteSize() > 8 * MAX_DATA_BYTES:
        raise InvalidArgumentError(f"{field} is larger than {MAX_DATA_BYTES} bytes as JSON", field=field)
    return struct_to_dict(data)


def _task(request: conversation_pb2.SendMessageRequest) -> TaskRequest | None:
    if not request.HasField("task"):
        return None
    return TaskRequest(goal=request.task.goal, input=_data(request.task, "input"), playbook=request.task.playbook)


class ConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    """ConversationService: versioned multi-turn conversations."""

    def __init__(self, conversations: Conversations, verifier: DelegationVerifier | None = None) -> None:
        self.conversations = conversations
        self._verifier = verifier

    def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The caller's identity and, when it forwards a verified end-user token, the end user it acts for."""
        identity = security.current_identity()
        uri = identity.uri if identity is not None else None
        token = dict(context.invocation_metadata() or ()).get(DELEGATION_METADATA, "")
        if not token or self._verifier is None:
            return Caller(uri)
        claims = self._verifier.verify(str(token), kind=TokenKind.END_USER)
        return Caller(uri, end_user=claims.subject, tenant=claims.tenant)

    async def CreateConversation(
        self,
        request: conversation_pb2.CreateConversationRequest,
        context: grpc.aio.ServicerContext[conversation_pb2.CreateConversationRequest, conversation_pb2.CreateConversationResponse],
    ) -> conversation_pb2.CreateConversationResponse:
        record = await self.conversations.create(
            self._caller(context), title=request.title, labels=dict(request.labels), request_id=request.request_id
        )
        return conversation_pb2.CreateConversationResponse(conversation=conversation_proto(record))

    async def GetConversation(
        self,
        request: conversation_pb2.GetConversationRequest,
        context: grpc.aio.ServicerContext[conversation_pb2.GetConversationRequest, conversation_pb2.GetConversationResponse],
    ) -> conversation_pb2.GetConversationResponse:
        record, messages = await self.conversations.get(
            self._caller(context),
            request.conversation_id, include_hidden=request.include_hidden
        )
        return conversation_pb2.GetConversationResponse(
            conversation=conversation_proto(record), messages=[message_proto(m) for m in messages]
        )

    async def ListConversations(
        self,
        request: conversation_pb2.ListConversationsRequest,
        context: grpc.aio.ServicerContext[conversation_pb2.ListConversationsRequest, conversation_pb2.ListConversationsResponse],
    ) -> conversation_pb2.ListConversationsResponse:
        page, next_token = await self.conversations.list_page(
            self._caller(context),
            owner=request.owner,
            labels=dict(request.labels),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return conversation_pb2.ListConversationsResponse(
            conversations=[conversation_proto(c) for c in page], next_page_token=next_token
        )

    async def SendMessage(
        self,
        request: conversation_pb2.SendMessageRequest,
        context: grpc.aio.ServicerContext[conversation_pb2.SendMessageRequest, conversation_pb2.SendMessageResponse],
    ) -> conversation_pb2.SendMessageResponse:
        sent = await self.conversations.send(
            self._caller(context),
            request.conversation_id,
            expected_version=request.expected_version,
            role=_role(request.role),
            text=request.text,
            data=_data(request),
            start_task=request.start_task,
            task=_task(request),
            request_id=request.request_id,
        )
        return conversation_pb2.SendMessageResponse(
            conversation=conversation_proto(sent.conversation),
            message=message_proto(sent.message),
            task_id=sent.task_id,
        )

    async def WatchConversation(
        self,
        request: conversation_pb2.WatchConversationRequest,
        context: grpc.aio.ServicerContext[conversation_pb2.WatchConversationRequest, conversation_pb2.WatchConversationResponse],
    ) -> AsyncIterator[conversation_pb2.WatchConversationResponse]:
        caller = self._caller(context)
        async for change in self.conversations.watch(caller, request.conversation_id, request.since_version):
            yield conversation_pb2.WatchConversationResponse(
                version=change.version,
                message=message_proto(change),
                rolled_back_to_version=change.rolled_back_to or 0,
            )

    async def RollbackConversation(
        self,
        request: conversation_pb2.RollbackConversationRequest,
        context: grpc.aio.ServicerContext[conversation_pb2.RollbackConversationRequest, conversation_pb2.RollbackConversationResponse],
    ) -> conversation_pb2.RollbackConversationResponse:
        record, _notice = await self.conversations.rollback(
            self._caller(context),
            request.conversation_id,
            expected_version=request.expected_version,
            to_version=request.to_version,
        )
        return conversation_pb2.RollbackConversationResponse(conversation=conversation_proto(record))
