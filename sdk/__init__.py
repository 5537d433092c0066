"""Agentic Mesh: a gRPC service mesh of AI agents.

What every process shares: settings, the error tree, one way to build servers and channels, and the
registry client. Agent authors start at :mod:`agentmesh.agent`; inference lives in :mod:`agentmesh.inference`.
Names are imported on first use (PEP 562) so that ``agentmesh --help`` does not pay for gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentmesh._channel import create_channel
    from agentmesh._errors import (
        AbortedError,
        AlreadyExistsError,
        DeadlineExceededError,
        FailedPreconditionError,
        InternalError,
        InvalidArgumentError,
        MeshError,
        NotFoundError,
        PermissionDeniedError,
        ResourceExhaustedError,
        UnauthenticatedError,
        UnavailableError,
        UnimplementedError,
        from_rpc_error,
    )
    from agentmesh._health import check_health, wait_until_serving
    from agentmesh._registry_client import RegistryClient
    from agentmesh._server import (
        MeshServer,
        ServiceBinding,
        Serving,
        bind,
    )
    from agentmesh._settings import Settings

__version__ = "0.2.0"

_EXPORTS: dict[str, str] = {
    "create_channel": "agentmesh._channel",
    "AbortedError": "agentmesh._errors",
    "AlreadyExistsError": "agentmesh._errors",
    "DeadlineExceededError": "agentmesh._errors",
    "FailedPreconditionError": "agentmesh._errors",
    "InternalError": "agentmesh._errors",
    "InvalidArgumentError": "agentmesh._errors",
    "MeshError": "agentmesh._errors",
    "NotFoundError": "agentmesh._errors",
    "PermissionDeniedError": "agentmesh._errors",
    "ResourceExhaustedError": "agentmesh._errors",
    "UnauthenticatedError": "agentmesh._errors",
    "UnavailableError": "agentmesh._errors",
    "UnimplementedError": "agentmesh._errors",
    "from_rpc_error": "agentmesh._errors",
    "check_health": "agentmesh._health",
    "wait_until_serving": "agentmesh._health",
    "RegistryClient": "agentmesh._registry_client",
    "MeshServer": "agentmesh._server",
    "ServiceBinding": "agentmesh._server",
    "Serving": "agentmesh._server",
    "bind": "agentmesh._server",
    "Settings": "agentmesh._settings",
}

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "MeshError",
    "MeshServer",
    "NotFoundError",
    "PermissionDeniedError",
    "RegistryClient",
    "ResourceExhaustedError",
    "ServiceBinding",
    "Serving",
    "Settings",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "bind",
    "check_health",
    "create_channel",
    "from_rpc_error",
    "wait_until_serving",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentmesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
