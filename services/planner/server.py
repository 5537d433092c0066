"""Builds the planner server: TaskService, ConversationService, AuditService; ready when its database is."""

from __future__ import annotations

from agentmesh import audit
from agentmesh._server import MeshServer, bind
from agentmesh._settings import Settings
from agentmesh.services.planner.conversation_servicer import ConversationServicer
from agentmesh.services.planner.conversations import Conversations
from agentmesh.services.planner.conversations_store import ConversationStore
from agentmesh.services.planner.servicer import TaskServicer
from agentmesh.v1 import audit_pb2_grpc, conversation_pb2_grpc, task_pb2_grpc

SERVICE_NAME = "planner"


def build_server(settings: Settings, *, port: int | None = None) -> MeshServer:
    """The planner as a MeshServer on ``port`` (default: settings.planner_port)."""
    from agentmesh.storage import create_async_engine, ping

    engine = create_async_engine(settings.resolved_database_url)
    conversations = Conversations(ConversationStore(engine), trust_domain=settings.trust_domain)

    async def database_ready() -> bool:
        return await ping(engine)

    return MeshServer(
        name=SERVICE_NAME,
        settings=settings,
        port=settings.planner_port if port is None else port,
        readiness=database_ready,
        services=[
            bind(TaskServicer(), task_pb2_grpc.add_TaskServiceServicer_to_server, "agentmesh.v1.TaskService"),
            bind(
                ConversationServicer(conversations),
                conversation_pb2_grpc.add_ConversationServiceServicer_to_server,
                "agentmesh.v1.ConversationService",
            ),
            bind(audit.AuditServicer(engine), audit_pb2_grpc.add_AuditServiceServicer_to_server, "agentmesh.v1.AuditService"),
        ],
    )
