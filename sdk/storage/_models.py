"""Imports every model module so that ``Base.metadata`` knows every table (what Alembic compares)."""

from __future__ import annotations

from agentmesh.storage import _audit_models, _conversation_models, _registry_models, _task_models
from agentmesh.storage._base import Base

__all__ = ["Base", "metadata"]

_MODULES = (_audit_models, _conversation_models, _registry_models, _task_models)
metadata = Base.metadata
