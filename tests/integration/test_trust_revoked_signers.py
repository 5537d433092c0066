"""A delegation token signed by a revoked certificate is refused mesh-wide, like a call made with it.

The gateway's key leaked: the thief holds a gateway certificate and can mint end-user tokens for any user,
tenant and scope. Once an operator revokes that certificate's serial at the registry, the planner refuses
the tokens it signed within 2 s (even tokens it already verified and cached), while tokens of the gateway's
other (unrevoked) certificate keep working.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from agentmesh._channel import create_channel
from agentmesh.security import CredentialFiles, DelegationIssuer, TokenKind
from agentmesh.v1 import conversation_pb2, conversation_pb2_grpc, task_pb2, task_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.planner import PlannerMesh

pytestmark = pytest.mark.asyncio

WITHIN = 2.0  # seconds: the revocation promise


def _user_token(issuer: DelegationIssuer, trust_domain: str) -> list[tuple[str, str]]:
    token = issuer.issue(
        kind=TokenKind.END_USER,
        audience=f"spiffe://{trust_domain}/service/planner",
        subject="mallory",
        tenant="acme",
        scopes=["conversations:read", "conversations:write", "tasks:read", "approve"],
    )
    return [("x-agentmesh-delegation", token)]


async def test_tokens_signed_by_a_revoked_gateway_certificate_are_refused_by_the_planner(
    planner_mesh: PlannerMesh, issue_identity: IssueIdentity, tmp_path: Path
) -> None:
    td = planner_mesh.settings.trust_domain
    stolen = issue_identity("service", "gateway", out_dir=tmp_path)  # a second gateway certificate: the leaked one
    thief = DelegationIssuer(CredentialFiles(stolen.cert_path, stolen.key_path, stolen.ca_path))
    issue_identity("service", "gateway")
    honest = DelegationIssuer.from_settings(planner_mesh.settings, "service", "gateway")
    forged, genuine = _user_token(thief, td), _user_token(honest, td)
    serial = f"{x509.load_pem_x509_certificate(stolen.cert_path.read_bytes()).serial_number:x}"

    issue_identity("client", "ops")
    async with create_channel(planner_mesh.planner.address, planner_mesh.settings, kind="client", name="ops") as channel:
        conversations = conversation_pb2_grpc.ConversationServiceStub(channel)
        tasks = task_pb2_grpc.TaskServiceStub(channel)

        async def list_as(metadata: list[tuple[str, str]]) -> Any:
            return await conversations.ListConversations(
                conversation_pb2.ListConversationsRequest(), metadata=metadata, timeout=5
            )

        made = await conversations.CreateConversation(
            conversation_pb2.CreateConversationRequest(title="before the leak was noticed"), metadata=forged, timeout=5
        )
        assert made.conversation.conversation_id  # accepted (and cached) while the certificate was trusted
        await tasks.ListTasks(task_pb2.ListTasksRequest(), metadata=forged, timeout=5)

        async with planner_mesh.registry.client("client", "ops") as ops:
            await ops.revoke(certificate_serial=serial, reason="gateway key leaked")
        started = time.monotonic()
        while True:
            try:
                await list_as(forged)
            except grpc.aio.AioRpcError as refused:
                assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused.details()
                assert "revoked" in (refused.details() or "") and serial in (refused.details() or "")
                break
            assert time.monotonic() - started < WITHIN, f"a revoked signer's token still accepted after {WITHIN}s"
            await asyncio.sleep(0.05)

        calls = {
            "ListTasks": tasks.ListTasks(task_pb2.ListTasksRequest(), metadata=forged, timeout=5),
            "GetConversation": conversations.GetConversation(
                conversation_pb2.GetConversationRequest(conversation_id=made.conversation.conversation_id),
                metadata=forged,
                timeout=5,
            ),
        }
        for method, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        # Only that certificate is revoked: the gateway's own keeps speaking for its users.
        listed = (await list_as(genuine)).conversations
        assert [c.conversation_id for c in listed] == [made.conversation.conversation_id]


async def test_an_agent_refuses_tokens_of_the_signers_its_server_refuses(mesh_settings: Any) -> None:
    from agentmesh.agent import AgentRuntime
    from tests.integration.planner_agents import Worker

    runtime = AgentRuntime(Worker(mesh_settings), port=0, register=False)
    verifier = runtime.runner.verifier
    assert verifier is not None and verifier.revocations is runtime.server.revocations
