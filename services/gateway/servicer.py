"""The gateway's public RPC surface: TaskService, ConversationService and read-only RegistryService.

Until the gateway lands (authn, rate limits, audit, routing to the planner) every RPC answers
UNIMPLEMENTED: the generated base servicers raise NotImplementedError, mapped by the server interceptor."""

from __future__ import annotations

from agentmesh.v1 import conversation_pb2_grpc, registry_pb2_grpc, task_pb2_grpc


class PublicTaskServicer(task_pb2_grpc.TaskServiceServicer):
    """TaskService as outside callers see it."""


class PublicConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    """ConversationService as outside callers see it."""


class PublicRegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Read-only RegistryService as outside callers see it."""
