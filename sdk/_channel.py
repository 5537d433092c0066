"""One way to build a mesh client channel: mTLS with this process's identity, telemetry, deadlines.

(First cut by the lead; the security and telemetry work extend it and keep ``create_channel``.)
"""

from __future__ import annotations

import logging

import grpc

from agentmesh import security
from agentmesh._settings import Settings
from agentmesh.resilience import client_interceptors

__all__ = ["create_channel"]

logger = logging.getLogger(__name__)

# Keepalive so dead peers are noticed between calls, and no hard cap on message size surprises.
_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def create_channel(target: str, settings: Settings, *, kind: str, name: str) -> grpc.aio.Channel:
    """A channel to ``target`` presenting the ``kind``/``name`` workload identity."""
    interceptors = client_interceptors(target, settings, name)
    if settings.insecure_dev:
        logger.warning("INSECURE: %s/%s connects to %s in plaintext", kind, name, target)
        return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS, interceptors=interceptors)
    credentials = security.channel_credentials(settings, kind, name)
    return grpc.aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS, interceptors=interceptors)
