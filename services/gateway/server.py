"""Builds the gateway: a public TLS port (no client certificates; OAuth2 bearer tokens instead) in front of
the planner and the registry, which it calls over mTLS as ``service/gateway``.

Ready when the planner it routes to reports SERVING and the audit store answers. The audit trail is
written straight to the mesh database (group-committed, :class:`agentmesh.audit.AuditLog`), so a refusal
is recorded even when the planner is down.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh._channel import create_channel
from agentmesh._server import MeshServer
from agentmesh._settings import Settings
from agentmesh.audit import AuditLog, Pseudonyms, install_log_redaction
from agentmesh.services.gateway.auth import TokenVerifier
from agentmesh.services.gateway.gate import DelegationMinter, Gate
from agentmesh.services.gateway.limits import RateLimiter
from agentmesh.services.gateway.servicer import public_services
from agentmesh.services.gateway.validation import PlaybookSchemas, SchemaSource

SERVICE_NAME = "gateway"
# gRPC core refuses anything above this outright (RESOURCE_EXHAUSTED, not audited); the gateway's own,
# smaller limit (AGENTMESH_GATEWAY_MAX_REQUEST_BYTES) answers INVALID_ARGUMENT and is audited.
_HARD_LIMIT_FACTOR = 4


class _Upstream:
    """One lazily opened mTLS channel to a replicated mesh service, shared by every call.

    ``address`` may list every replica; the server is verified by ``identity`` (kind/name), so any replica
    answers and a dead one is left within a second.
    """

    def __init__(self, address: str, settings: Settings, identity: str) -> None:
        self._address = address
        self._settings = settings
        self._identity = identity
        self._channel: grpc.aio.Channel | None = None

    def __call__(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = create_channel(
                self._address, self._settings, kind="service", name=SERVICE_NAME, server_identity=self._identity
            )
        return self._channel


def build_server(
    settings: Settings,
    *,
    port: int | None = None,
    schemas: SchemaSource | None = None,
    audit: AuditLog | None = None,
) -> MeshServer:
    """The gateway as a MeshServer on ``port`` (default: settings.gateway_port).

    ``schemas`` defaults to asking the planner for playbook input schemas; ``audit`` to an
    :class:`AuditLog` on ``settings.resolved_database_url``.
    """
    from agentmesh.storage import create_async_engine, ping

    install_log_redaction()  # whatever a handler logs about a request, no PII reaches the log sink
    engine = create_async_engine(settings.resolved_database_url)
    planner = _Upstream(settings.planner_address, settings, "service/planner")
    registry = _Upstream(settings.registry_address, settings, "service/registry")
    gate = Gate(
        settings,
        verifier=TokenVerifier.from_settings(settings),
        limiter=RateLimiter.from_settings(settings),
        audit=audit if audit is not None else AuditLog(engine),
        delegation=DelegationMinter(settings),
    )
    services = public_services(
        gate,
        planner=planner,
        registry=registry,
        schemas=schemas if schemas is not None else PlaybookSchemas(planner),
        injection_policy=settings.gateway_injection_policy,
        pseudonyms=Pseudonyms.from_settings(settings),
    )

    async def ready() -> bool:
        health = health_pb2_grpc.HealthStub(planner())
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING and await ping(engine)

    serving_settings = settings
    if settings.gateway_tls_cert_file:  # a certificate from a public CA instead of the mesh CA's
        serving_settings = settings.replace(
            cert_file=settings.gateway_tls_cert_file, key_file=settings.gateway_tls_key_file
        )
    hard_limit = settings.gateway_max_request_bytes * _HARD_LIMIT_FACTOR
    return MeshServer(
        name=SERVICE_NAME,
        settings=serving_settings,
        port=settings.gateway_port if port is None else port,
        readiness=ready,
        public=True,
        options=[("grpc.max_receive_message_length", hard_limit)],
        services=services,
    )

