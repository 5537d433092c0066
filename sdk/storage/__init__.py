"""Storage of the mesh: SQLAlchemy 2 models, engines and sessions, and the packaged Alembic migrations.

SQLite by default (``sqlite:///.agentmesh/mesh.db``), PostgreSQL in production (``AGENTMESH_DATABASE_URL``);
the same models and migrations serve both. Servers use :func:`create_async_engine` and
:func:`async_session_factory`, report readiness with :func:`ping`, and migrate with :func:`upgrade`
(or ``agentmesh db upgrade``).
"""

from __future__ import annotations

from agentmesh.storage._audit_models import AuditRecord
from agentmesh.storage._base import Base
from agentmesh.storage._conversation_models import Conversation, ConversationMessage
from agentmesh.storage._driver import psycopg_connection, write
from agentmesh.storage._engine import (
    async_session_factory,
    async_url,
    connection_lost,
    create_async_engine,
    create_engine,
    default_url,
    mask_url,
    sync_url,
)
from agentmesh.storage._migrations import alembic_config, current, downgrade, heads, ping, upgrade
from agentmesh.storage._models import metadata
from agentmesh.storage._pipeline import batched_pipeline, queue_begin, queue_commit
from agentmesh.storage._registry_models import (
    Agent,
    AgentInstance,
    AgentLease,
    AgentSkill,
    AgentVersion,
    PolicyBit,
    RegistryEvent,
    Revocation,
    RoutingPolicy,
)
from agentmesh.storage._task_models import (
    CollaboratorChoice,
    ParameterSubstitution,
    Plan,
    PlanRejection,
    PlanStep,
    StepApproval,
    StepAttempt,
    Task,
    TaskEvent,
)
from agentmesh.storage._types import BigIntPK, JSONDoc, UTCDateTime, fit_text, has_nul, utcnow

__all__ = [
    "Agent",
    "AgentInstance",
    "AgentLease",
    "AgentSkill",
    "AgentVersion",
    "AuditRecord",
    "Base",
    "BigIntPK",
    "CollaboratorChoice",
    "Conversation",
    "ConversationMessage",
    "JSONDoc",
    "ParameterSubstitution",
    "Plan",
    "PlanRejection",
    "PlanStep",
    "PolicyBit",
    "RegistryEvent",
    "Revocation",
    "RoutingPolicy",
    "StepApproval",
    "StepAttempt",
    "Task",
    "TaskEvent",
    "UTCDateTime",
    "alembic_config",
    "async_session_factory",
    "async_url",
    "batched_pipeline",
    "connection_lost",
    "create_async_engine",
    "create_engine",
    "current",
    "default_url",
    "downgrade",
    "fit_text",
    "has_nul",
    "heads",
    "mask_url",
    "metadata",
    "ping",
    "psycopg_connection",
    "queue_begin",
    "queue_commit",
    "sync_url",
    "upgrade",
    "utcnow",
    "write",
]
