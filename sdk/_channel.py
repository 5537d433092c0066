"""One way to build a mesh client channel: mTLS with this process's identity, telemetry, deadlines.

(First cut by the lead; the security and telemetry work extend it and keep ``create_channel``.)
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from agentmesh import security
from agentmesh._failover import replica_options, replica_target
from agentmesh._settings import Settings
from agentmesh.resilience import mesh_channel

__all__ = ["create_channel"]

logger = logging.getLogger(__name__)

# Keepalive so dead peers are noticed between calls, also on a stream that stays quiet for long (the revocation
# feed, watches): by default gRPC stops after two pings without data. Mesh servers accept one ping per 20 s
# (agentmesh._server). And no hard cap on message size surprises.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def create_channel(
    target: str, settings: Settings, *, kind: str, name: str, server_identity: str = ""
) -> grpc.aio.Channel:
    """A channel to ``target`` presenting the ``kind``/``name`` workload identity.

    For a replicated service pass ``server_identity`` (``kind/name``, e.g. ``service/registry``): ``target``
    may then list several ``host:port`` addresses (comma-separated) or be a DNS name with many, calls move
    to a live replica when one goes away, and the server is verified as that identity, whatever address
    answered (see :mod:`agentmesh._failover`).
    """
    options = list(_CHANNEL_OPTIONS)
    if server_identity:
        options += replica_options(settings, server_identity)
        target = replica_target(target)
    credentials = None
    if settings.insecure_dev:
        logger.warning("INSECURE: %s/%s connects to %s in plaintext", kind, name, target)
    else:
        credentials = security.channel_credentials(settings, kind, name)
    # MeshChannel derives from grpc.aio's runtime Channel class, which grpc-stubs does not relate to the
    # grpc.aio.Channel it describes (the type every stub and caller takes).
    return mesh_channel(target, settings, name, credentials, options, server_identity)  # type: ignore[return-value]
