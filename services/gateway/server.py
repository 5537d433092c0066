"""Builds the gateway server; ready when the planner it routes to reports SERVING."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh._channel import create_channel
from agentmesh._server import MeshServer, bind
from agentmesh._settings import Settings
from agentmesh.services.gateway.servicer import (
    PublicConversationServicer,
    PublicRegistryServicer,
    PublicTaskServicer,
)
from agentmesh.v1 import conversation_pb2_grpc, registry_pb2_grpc, task_pb2_grpc

SERVICE_NAME = "gateway"


def build_server(settings: Settings, *, port: int | None = None) -> MeshServer:
    """The gateway as a MeshServer on ``port`` (default: settings.gateway_port)."""
    channel: grpc.aio.Channel | None = None

    async def planner_ready() -> bool:
        nonlocal channel
        if channel is None:
            channel = create_channel(settings.planner_address, settings, kind="service", name=SERVICE_NAME)
        health = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    return MeshServer(
        name=SERVICE_NAME,
        settings=settings,
        port=settings.gateway_port if port is None else port,
        readiness=planner_ready,
        services=[
            bind(PublicTaskServicer(), task_pb2_grpc.add_TaskServiceServicer_to_server, "agentmesh.v1.TaskService"),
            bind(
                PublicConversationServicer(),
                conversation_pb2_grpc.add_ConversationServiceServicer_to_server,
                "agentmesh.v1.ConversationService",
            ),
            bind(
                PublicRegistryServicer(),
                registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                "agentmesh.v1.RegistryService",
            ),
        ],
    )
