"""Mesh security: CA and workload certificates, mTLS credentials, SPIFFE identity, authorization.

(First cut by the lead; the security work replaces the internals and keeps these entry points.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from agentmesh._settings import Settings

__all__ = ["ServerSecurity", "add_port", "channel_credentials", "server_security"]

logger = logging.getLogger(__name__)


class ServerSecurity:
    """Per-call identity and authorization checks of one server."""

    def __init__(self, settings: Settings) -> None:
        self._insecure = settings.insecure_dev

    def check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Raise a MeshError when the caller may not call ``method``."""


def server_security(settings: Settings, kind: str, name: str) -> ServerSecurity:
    """The identity/authorization checker for a server of ``kind``/``name``."""
    return ServerSecurity(settings)


def _credential_paths(settings: Settings, kind: str, name: str) -> tuple[Path, Path, Path]:
    certs = settings.home / "certs"
    cert = Path(settings.cert_file) if settings.cert_file else certs / f"{kind}-{name}.pem"
    key = Path(settings.key_file) if settings.key_file else certs / f"{kind}-{name}-key.pem"
    ca = Path(settings.ca_file) if settings.ca_file else settings.home / "ca" / "ca.pem"
    return cert, key, ca


def add_port(server: grpc.aio.Server, target: str, settings: Settings, kind: str, name: str) -> int:
    """Bind ``server`` to ``target`` with mTLS (or plaintext under --insecure-dev) and return the port."""
    if settings.insecure_dev:
        logger.warning("INSECURE: %s/%s serves plaintext without client authentication", kind, name)
        return server.add_insecure_port(target)
    cert, key, ca = _credential_paths(settings, kind, name)
    credentials = grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=ca.read_bytes(), require_client_auth=True
    )
    return server.add_secure_port(target, credentials)


def channel_credentials(settings: Settings, kind: str, name: str) -> grpc.ChannelCredentials:
    """mTLS credentials for a client of ``kind``/``name``."""
    cert, key, ca = _credential_paths(settings, kind, name)
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(), private_key=key.read_bytes(), certificate_chain=cert.read_bytes()
    )
