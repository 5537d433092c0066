"""The registry: agent cards, leases, two-scope discovery with reasons, version routing, watch.

``build_server(settings)`` gives a replica (gRPC server plus in-memory index); ``Registry`` is the domain
class the servicer calls, usable without gRPC.
"""

from __future__ import annotations

from agentmesh.services.registry.registry import Registry
from agentmesh.services.registry.server import RegistryServer, build_server, serve

__all__ = ["Registry", "RegistryServer", "build_server", "serve"]
