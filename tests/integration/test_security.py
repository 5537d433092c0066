"""mTLS, SPIFFE identity and authorization on a real MeshServer with real certificates.

A refused TLS handshake (rogue CA, expired or not-yet-valid certificate, no client certificate) never
reaches the server's handlers: gRPC reports it to the client as UNAVAILABLE ("failed to connect"). A
handshake that succeeds with a certificate that is not a mesh identity reaches the server, which answers
UNAUTHENTICATED; a mesh identity the policy does not allow gets PERMISSION_DENIED.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentmesh._channel import create_channel
from agentmesh._server import MeshServer, bind
from agentmesh._settings import Settings
from agentmesh.security import (
    CertificateAuthority,
    IssuedCertificate,
    channel_credentials,
    current_identity,
    require_identity,
)
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.fixtures.certs import IssueIdentity

TD = "agentmesh.test"
INVOKE = "/agentmesh.v1.AgentService/Invoke"


class WhoAmIAgent(agent_pb2_grpc.AgentServiceServicer):
    """Answers with the caller's verified identity, as a handler sees it."""

    async def Invoke(
        self, request: agent_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.InvokeResponse:
        caller = current_identity()
        output = struct_pb2.Struct()
        output.update({"caller": caller.uri if caller else "", "kind": caller.kind if caller else ""})
        return agent_pb2.InvokeResponse(output=output)

    async def InvokeStream(
        self, request: agent_pb2.InvokeStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.InvokeStreamResponse]:
        yield agent_pb2.InvokeStreamResponse(
            progress=agent_pb2.InvokeProgress(message="looking", fraction=0.5)
        )
        yield agent_pb2.InvokeStreamResponse(result=await self.Invoke(request.invocation, context))

    async def Describe(
        self, request: agent_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.DescribeResponse:
        return agent_pb2.DescribeResponse(
            card=agent_pb2.AgentCard(name="whoami", spiffe_id=f"spiffe://{TD}/agent/whoami")
        )


class OwnCardRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """Registers a card only for the agent it names (the check the real registry makes)."""

    async def RegisterAgent(
        self, request: registry_pb2.RegisterAgentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RegisterAgentResponse:
        require_identity(request.card.spiffe_id)
        return registry_pb2.RegisterAgentResponse(
            instance=registry_pb2.AgentInstance(instance_id="i-1", card=request.card)
        )


@pytest.fixture(scope="module")
async def server(mesh_settings: Settings, issue_identity: IssueIdentity) -> AsyncIterator[MeshServer]:
    issue_identity("service", "security-test")
    mesh = MeshServer(
        name="security-test",
        settings=mesh_settings,
        port=0,
        services=[
            bind(
                WhoAmIAgent(), agent_pb2_grpc.add_AgentServiceServicer_to_server, "agentmesh.v1.AgentService"
            ),
            bind(
                OwnCardRegistry(),
                registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                "agentmesh.v1.RegistryService",
            ),
        ],
    )
    async with mesh:
        yield mesh


def _as(settings: Settings, issued: IssuedCertificate) -> Settings:
    """Settings presenting exactly this certificate."""
    return settings.replace(cert_file=str(issued.cert_path), key_file=str(issued.key_path))


async def _invoke(
    address: str, settings: Settings, kind: str = "client", name: str = "x"
) -> agent_pb2.InvokeResponse:
    # The bare mTLS channel: create_channel's retries and per-endpoint breaker would blur refused handshakes.
    async with grpc.aio.secure_channel(address, channel_credentials(settings, kind, name)) as channel:
        return await agent_pb2_grpc.AgentServiceStub(channel).Invoke(
            agent_pb2.InvokeRequest(skill="whoami"), timeout=5
        )


async def _refused(
    address: str, settings: Settings, kind: str = "client", name: str = "x"
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _invoke(address, settings, kind, name)
    return refused.value


async def test_planner_identity_is_accepted_and_visible_to_the_handler(
    server: MeshServer, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    issue_identity("service", "planner")
    async with create_channel(server.address, mesh_settings, kind="service", name="planner") as channel:
        response = await agent_pb2_grpc.AgentServiceStub(channel).Invoke(
            agent_pb2.InvokeRequest(skill="whoami"), timeout=5
        )
    assert response.output["caller"] == f"spiffe://{TD}/service/planner"
    assert response.output["kind"] == "service"


async def test_streaming_calls_are_checked_and_see_the_caller_too(
    server: MeshServer, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    issue_identity("service", "planner")
    issue_identity("agent", "docs/summarizer")
    request = agent_pb2.InvokeStreamRequest(invocation=agent_pb2.InvokeRequest(skill="whoami"))
    async with grpc.aio.secure_channel(
        server.address, channel_credentials(mesh_settings, "service", "planner")
    ) as channel:
        events = [
            event async for event in agent_pb2_grpc.AgentServiceStub(channel).InvokeStream(request, timeout=5)
        ]
    assert events[0].progress.message == "looking"
    assert events[-1].result.output["caller"] == f"spiffe://{TD}/service/planner"
    async with grpc.aio.secure_channel(
        server.address, channel_credentials(mesh_settings, "agent", "docs/summarizer")
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            async for _ in agent_pb2_grpc.AgentServiceStub(channel).InvokeStream(request, timeout=5):
                pass
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "/agentmesh.v1.AgentService/InvokeStream" in (denied.value.details() or "")


def _window(start_hours: float, end_hours: float) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now + timedelta(hours=start_hours), now + timedelta(hours=end_hours)


@pytest.mark.parametrize(
    ("label", "window"),
    [("expired", (-3, -1)), ("not-yet-valid", (1, 3))],
)
async def test_certificate_outside_its_validity_fails_the_handshake(
    server: MeshServer,
    mesh_settings: Settings,
    mesh_ca: CertificateAuthority,
    label: str,
    window: tuple[float, float],
) -> None:
    not_before, not_after = _window(*window)
    issued = mesh_ca.sign(
        f"client-{label}", uris=[f"spiffe://{TD}/service/planner"], not_before=not_before, not_after=not_after
    )
    error = await _refused(server.address, _as(mesh_settings, issued))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_a_rogue_ca_fails_the_handshake(
    server: MeshServer, mesh_settings: Settings, tmp_path: Path
) -> None:
    rogue = CertificateAuthority.init(tmp_path, TD)  # same trust domain, different key: must not matter
    issued = rogue.issue("service", "planner")
    error = await _refused(server.address, _as(mesh_settings, issued))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_without_a_certificate_fails_the_handshake(
    server: MeshServer, mesh_ca: CertificateAuthority
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=mesh_ca.ca_path.read_bytes())
    async with grpc.aio.secure_channel(server.address, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agent_pb2_grpc.AgentServiceStub(channel).Invoke(agent_pb2.InvokeRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_refuses_a_server_from_another_ca(
    server: MeshServer, mesh_settings: Settings, tmp_path: Path, issue_identity: IssueIdentity
) -> None:
    rogue = CertificateAuthority.init(tmp_path, TD)
    issue_identity("service", "planner")
    error = await _refused(
        server.address, mesh_settings.replace(ca_file=str(rogue.ca_path)), "service", "planner"
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("label", "uris", "explanation"),
    [
        ("no-uri", [], "no URI SAN"),
        ("two-uris", [f"spiffe://{TD}/service/planner", f"spiffe://{TD}/client/ops"], "2 URI SANs"),
        ("foreign-domain", ["spiffe://evil.example/service/planner"], "not in trust domain 'agentmesh.test'"),
        ("not-spiffe", [f"https://{TD}/service/planner"], "not a spiffe:// URI"),
        ("unknown-kind", [f"spiffe://{TD}/robot/planner"], "kind must be one of"),
        ("no-name", [f"spiffe://{TD}/service"], "spiffe://<trust-domain>/<kind>/<name>"),
    ],
)
async def test_certificate_without_a_mesh_identity_is_unauthenticated(
    server: MeshServer,
    mesh_settings: Settings,
    mesh_ca: CertificateAuthority,
    label: str,
    uris: list[str],
    explanation: str,
) -> None:
    issued = mesh_ca.sign(
        f"client-{label}", uris=uris, not_before=_window(-1, 1)[0], not_after=_window(-1, 1)[1]
    )
    error = await _refused(server.address, _as(mesh_settings, issued))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert explanation in (error.details() or "")


async def _list_services(
    address: str, settings: Settings, kind: str = "client", name: str = "x"
) -> list[str]:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with grpc.aio.secure_channel(address, channel_credentials(settings, kind, name)) as channel:
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request]), timeout=5
        )
        return [s.name async for r in responses for s in r.list_services_response.service]


async def test_reflection_is_open_to_mesh_identities_only(
    server: MeshServer, mesh_settings: Settings, mesh_ca: CertificateAuthority, issue_identity: IssueIdentity
) -> None:
    issue_identity("agent", "docs/summarizer")
    assert "agentmesh.v1.AgentService" in await _list_services(
        server.address, mesh_settings, "agent", "docs/summarizer"
    )
    not_before, not_after = _window(-1, 1)
    stranger = mesh_ca.sign("client-stranger", uris=[], not_before=not_before, not_after=not_after)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _list_services(server.address, _as(mesh_settings, stranger))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_policy_denial_names_the_identity_and_the_method(
    server: MeshServer, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    issue_identity("agent", "docs/summarizer")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _invoke(server.address, mesh_settings, "agent", "docs/summarizer")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"spiffe://{TD}/agent/docs/summarizer" in (denied.value.details() or "")
    assert INVOKE in (denied.value.details() or "")


async def test_every_identity_may_read_an_agent_card(
    server: MeshServer, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    issue_identity("agent", "docs/summarizer")
    async with create_channel(server.address, mesh_settings, kind="agent", name="docs/summarizer") as channel:
        response = await agent_pb2_grpc.AgentServiceStub(channel).Describe(
            agent_pb2.DescribeRequest(), timeout=5
        )
    assert response.card.name == "whoami"


async def test_agent_registers_its_own_card_but_not_someone_elses(
    server: MeshServer, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    issue_identity("agent", "docs/summarizer")
    me, other = f"spiffe://{TD}/agent/docs/summarizer", f"spiffe://{TD}/agent/docs/translator"
    async with create_channel(server.address, mesh_settings, kind="agent", name="docs/summarizer") as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        own = await registry.RegisterAgent(
            registry_pb2.RegisterAgentRequest(card=agent_pb2.AgentCard(spiffe_id=me)), timeout=5
        )
        assert own.instance.card.spiffe_id == me
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry.RegisterAgent(
                registry_pb2.RegisterAgentRequest(card=agent_pb2.AgentCard(spiffe_id=other)), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert me in (refused.value.details() or "") and other in (refused.value.details() or "")


async def test_malformed_request_bytes_get_invalid_argument(
    server: MeshServer, mesh_settings: Settings, issue_identity: IssueIdentity
) -> None:
    issue_identity("service", "planner")
    async with create_channel(server.address, mesh_settings, kind="service", name="planner") as channel:
        raw_invoke = channel.unary_unary(INVOKE)  # no serializer: the bytes go out as they are
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await raw_invoke(b"\xff\xff\xff\xff not a protobuf", timeout=5)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in (rejected.value.details() or "")
    assert "Traceback" not in (rejected.value.details() or "")


async def test_insecure_dev_serves_plaintext_and_says_so_loudly(
    mesh_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    insecure = mesh_settings.replace(insecure_dev=True)
    caplog.set_level(logging.WARNING, logger="agentmesh")
    services = [
        bind(WhoAmIAgent(), agent_pb2_grpc.add_AgentServiceServicer_to_server, "agentmesh.v1.AgentService")
    ]
    async with MeshServer(name="insecure", settings=insecure, port=0, services=services) as mesh:
        async with create_channel(mesh.address, insecure, kind="client", name="dev") as channel:
            response = await agent_pb2_grpc.AgentServiceStub(channel).Invoke(
                agent_pb2.InvokeRequest(), timeout=5
            )
    assert response.output["caller"] == ""  # no identities exist in plaintext
    assert any(
        "INSECURE" in record.getMessage() and "PLAINTEXT" in record.getMessage() for record in caplog.records
    )
