"""The planner's RPC surface (ConversationService: conversation_servicer.py). TaskService and AuditService
answer UNIMPLEMENTED until the planner lands; the generated base servicers raise NotImplementedError, which the server
interceptor maps to UNIMPLEMENTED with a readable message."""

from __future__ import annotations

from agentmesh.v1 import audit_pb2_grpc, task_pb2_grpc


class TaskServicer(task_pb2_grpc.TaskServiceServicer):
    """TaskService: submit, watch, cancel and explain tasks."""


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """AuditService: the hash-chained audit trail."""
