"""Builds the planner server: TaskService, ConversationService, AuditService; ready when its database is.

The server owns one :class:`TaskEngine` (the claim loop runs from start to stop) and hands it to
ConversationService, whose messages can start tasks and receive their results.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from agentmesh import audit
from agentmesh._registry_client import RegistryClient
from agentmesh._server import MeshServer, Serving, bind
from agentmesh._settings import Settings
from agentmesh.security import DelegationVerifier
from agentmesh.services.planner import task_rules
from agentmesh.services.planner.conversation_servicer import ConversationServicer
from agentmesh.services.planner.conversations import Conversations, TaskStart
from agentmesh.services.planner.conversations_store import ConversationStore
from agentmesh.services.planner.engine import SubmitRequest, TaskEngine
from agentmesh.services.planner.servicer import TaskServicer
from agentmesh.services.planner.store import PlannerStore
from agentmesh.v1 import audit_pb2_grpc, conversation_pb2_grpc, task_pb2_grpc

__all__ = ["PlannerServer", "build_server"]

SERVICE_NAME = "planner"


class PlannerServer(Serving):
    """The planner's gRPC server and its task engine, started and stopped together."""

    def __init__(self, settings: Settings, *, port: int | None = None, database_url: str | None = None) -> None:
        from agentmesh.storage import create_async_engine, ping

        self.settings = settings
        url = database_url or settings.resolved_database_url
        # Enough connections for a claim batch's worth of step transitions at once (PostgreSQL; SQLite is one writer).
        # LIFO: at low concurrency the same few connections serve every transition, so psycopg's prepared
        # statements (made after a statement's fifth use on a connection) are there, instead of 20 cold ones.
        pool = {"pool_size": 20, "max_overflow": 20, "pool_use_lifo": True} if url.startswith("postgres") else {}
        # No pre-ping (a round trip per checkout): a connection lost with the database fails once, is dropped from
        # the pool, and the engine's loops try again.
        self.database = create_async_engine(url, **pool)
        self.replica_id = f"planner-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.registry: RegistryClient | None = None  # made in start(): a channel belongs to the running loop
        self.inference: Any = None  # InferenceClient for model-made plans, when Triton is configured
        self.engine = TaskEngine(settings, PlannerStore(self.database, owner=self.replica_id))
        self.conversations = Conversations(
            ConversationStore(self.database),
            trust_domain=settings.trust_domain,
            start_task=self._start_task,
            check_task=self._check_task,
        )
        self.engine.add_finish_listener(self.conversations.tasks.on_task_finished)

        async def database_ready() -> bool:
            return await ping(self.database)

        user_tokens = DelegationVerifier.from_settings(settings, f"spiffe://{settings.trust_domain}/service/planner")

        self.server = MeshServer(
            name=SERVICE_NAME,
            settings=settings,
            port=settings.planner_port if port is None else port,
            readiness=database_ready,
            services=[
                bind(
                    TaskServicer(self.engine, settings, self.conversations.store),
                    task_pb2_grpc.add_TaskServiceServicer_to_server,
                    "agentmesh.v1.TaskService",
                ),
                bind(
                    ConversationServicer(self.conversations, user_tokens),
                    conversation_pb2_grpc.add_ConversationServiceServicer_to_server,
                    "agentmesh.v1.ConversationService",
                ),
                bind(
                    audit.AuditServicer(self.database),
                    audit_pb2_grpc.add_AuditServiceServicer_to_server,
                    "agentmesh.v1.AuditService",
                ),
            ],
        )
        # Delegation tokens signed by a revoked certificate or identity are refused like revoked callers.
        user_tokens.revocations = self.server.revocations
        self.engine.tokens.revocations = self.server.revocations

    def _check_task(self, goal: str, task_input: dict[str, Any], playbook: str) -> None:
        """Refuse, as SubmitTask would, a task a conversation message asks for that could never start."""
        task_rules.check_goal(goal)
        task_rules.check_input(task_input)
        # NotFoundError naming the known playbooks; InvalidArgumentError for input its playbook's schema rejects.
        self.engine.planner.check_input(goal, task_input, playbook)

    async def _start_task(self, start: TaskStart) -> str:
        task = await self.engine.submit(
            SubmitRequest(
                goal=start.goal,
                input=start.input,
                playbook=start.playbook,
                conversation_id=start.conversation_id,
                request_id=start.request_id,
                submitted_by=start.submitted_by,
                on_behalf_of=start.on_behalf_of,
                tenant=start.tenant,
            )
        )
        return task.task_id

    @property
    def address(self) -> str:
        """host:port the server listens on."""
        return self.server.address

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    async def start(self) -> None:
        """Serve, then start running tasks (and relaying conversation results)."""
        self.registry = RegistryClient(self.settings, kind="service", name=SERVICE_NAME)
        self.engine.attach_registry(self.registry)
        if self.settings.triton_url:
            from agentmesh.inference import InferenceClient
            from agentmesh.services.planner.model_planner import EmbeddingPlanner

            self.inference = InferenceClient(settings=self.settings)
            self.engine.planner.use_model(EmbeddingPlanner(self.inference, self.registry))
        await self.server.start()
        await self.engine.start()
        self.conversations.start()

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let running steps finish within the grace, stop serving, close connections."""
        grace = self.settings.shutdown_grace if grace is None else grace
        await self.server.drain()
        await self.engine.stop(grace)
        await self.conversations.stop()  # also ends WatchConversation streams (clients resume elsewhere)
        await self.server.stop(grace)
        if self.registry is not None:
            await self.registry.close()
        if self.inference is not None:
            await self.inference.close()
        await self.database.dispose()


def build_server(settings: Settings, *, port: int | None = None, database_url: str | None = None) -> PlannerServer:
    """The planner on ``port`` (default: settings.planner_port)."""
    return PlannerServer(settings, port=port, database_url=database_url)
