"""The console's HTTP surface against a running mesh: no token is 401, the gateway's scopes decide the rest,
every answer carries a strict Content-Security-Policy, and agent cards come back as data (never markup)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.integration.console_mesh import HOSTILE_DESCRIPTION, ConsoleMesh, Hostile, console_mesh

__all__ = ["console_mesh"]

pytestmark = pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)


async def _get(mesh: ConsoleMesh, path: str, token: str | None = None, **kw: Any) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(mesh.url + path, headers=headers, ssl=mesh.ssl_context(), **kw) as response:
            body = await response.json() if response.content_type == "application/json" else await response.text()
            return response.status, dict(response.headers), body


async def _post(mesh: ConsoleMesh, path: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            mesh.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, ssl=mesh.ssl_context()
        ) as response:
            return response.status, await response.json()


async def test_without_a_token_the_api_answers_401_and_pages_carry_a_strict_csp(console_mesh: ConsoleMesh) -> None:
    for path in ("/api/agents", "/api/agents/watch", "/api/tasks", "/api/tasks/x", "/api/agents/discover?intent=x"):
        status, headers, body = await _get(console_mesh, path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in body["error"]
    status, _, body = await _get(console_mesh, "/api/agents", token="not.a.jwt")
    assert status == 401  # the gateway refused it (UNAUTHENTICATED), the console says so
    for page in ("/", "/login", "/tasks", "/task?id=x", "/static/marketplace.js", "/api/agents"):
        status, headers, body = await _get(console_mesh, page)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "object-src 'none'" in csp, page
        assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
    status, _, html = await _get(console_mesh, "/")
    assert status == 200 and "<script" in html and "<script>" not in html  # only external module scripts
    assert "style=" not in html


async def test_the_gateway_scopes_decide_what_the_api_shows(console_mesh: ConsoleMesh) -> None:
    gateway = console_mesh.gateway
    reader = gateway.token(["agents:read", "tasks:read"])
    no_agents = gateway.token(["tasks:read"])
    status, _, body = await _get(console_mesh, "/api/agents", token=reader)
    assert status == 200
    assert {i["card"]["name"] for i in body["instances"]} == {"worker"}
    status, _, body = await _get(console_mesh, "/api/agents", token=no_agents)
    assert status == 403 and "instances" not in body
    status, _, body = await _get(console_mesh, "/api/agents/watch", token=no_agents)
    assert status == 403
    status, _, body = await _get(console_mesh, "/api/tasks", token=gateway.token(["agents:read"]))
    assert status == 403 and "tasks" not in body

    task_id = await console_mesh.submit("console_guarded", "please")
    from agentmesh.v1 import task_pb2

    await console_mesh.wait(task_id, (task_pb2.TASK_STATE_WAITING_APPROVAL,))
    path = f"/api/tasks/{task_id}/steps/gated/approve"
    status, body = await _post(console_mesh, path, reader, {"comment": "looks fine"})
    assert status == 403  # approving needs the `approve` scope, enforced by the gateway
    status, body = await _post(console_mesh, path, gateway.token(["approve", "tasks:read"]), {"comment": "ok"})
    assert status == 200 and body["approval"]["state"] == "APPROVAL_STATE_APPROVED"
    done = await console_mesh.wait(task_id)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED
    status, _, body = await _get(console_mesh, f"/api/tasks/{task_id}", token=reader)
    assert status == 200
    explanation = body["explanation"]
    assert [s["step_id"] for s in explanation["plan"]["steps"]] == ["gated"]
    assert explanation["approvals"][0]["decided_by"]
    # The decision (and the refused attempt) were audited by the gateway.
    from agentmesh.v1 import audit_pb2, audit_pb2_grpc

    async with gateway.channel() as channel:
        records = (await audit_pb2_grpc.AuditServiceStub(channel).ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(page_size=200), metadata=gateway.bearer(["audit:read"]), timeout=10
        )).records
    approvals = [r for r in records if r.action.endswith("/ApproveStep")]
    assert {r.outcome for r in approvals} >= {"OK", "PERMISSION_DENIED"}, [(r.action, r.outcome) for r in records]


async def test_discovery_reasons_and_hostile_cards_come_back_as_data(console_mesh: ConsoleMesh) -> None:
    await console_mesh.add_agent(Hostile(console_mesh.settings))
    token = console_mesh.gateway.token(["agents:read"])
    status, _, body = await _get(console_mesh, "/api/agents/discover?pattern=testing/.%2A&intent=shout+the+text", token=token)
    assert status == 200, body
    first = body["candidates"][0]
    assert first["instance"]["card"]["name"] == "worker" and first["reasons"]
    status, _, body = await _get(console_mesh, "/api/agents", token=token)
    hostile = next(i["card"] for i in body["instances"] if i["card"]["name"] == "hostile")
    assert hostile["description"] == HOSTILE_DESCRIPTION


async def test_the_gateway_process_serves_the_console_beside_its_public_port(
    recording_planner: Any, mesh_settings: Any, issue_identity: Any, migrated_database_url: str, tmp_path: Any
) -> None:
    """What `agentmesh gateway` runs: the gateway and, on console_port, the console calling it on loopback."""
    import ssl

    from agentmesh._server import MeshServer
    from agentmesh.services.gateway.console.process import GatewayWithConsole, build_server
    from agentmesh.services.gateway.devtokens import DevIssuer

    issue_identity("service", "gateway")
    settings = mesh_settings.replace(
        planner_address=recording_planner.address,
        database_url=migrated_database_url,
        gateway_jwks=str(tmp_path / "jwks" / "jwks.json"),
        readiness_interval=0.1,
        console_port=0,
    )
    issuer = DevIssuer(tmp_path / "jwks", issuer=settings.gateway_jwt_issuer, audience=settings.gateway_jwt_audience)
    issuer.rotate()
    assert isinstance(build_server(settings.replace(console_port=-1), port=0), MeshServer)  # -1: no console
    server = build_server(settings, port=0)
    assert isinstance(server, GatewayWithConsole)
    tls = ssl.create_default_context(cafile=str(settings.home / "ca" / "ca.pem"))
    token = issuer.issue(subject="alice", tenant="acme", scopes=["tasks:read"])
    async with server, aiohttp.ClientSession() as session:
        base = f"https://127.0.0.1:{server.console.port}"
        async with session.get(base + "/api/tasks/t-1", ssl=tls) as response:
            assert response.status == 401
        async with session.get(base + "/api/tasks/t-1", ssl=tls, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["explanation"]["task"]["task_id"] == "t-1"
    forwarded = [c for c in recording_planner.calls if c.method == "ExplainTask"]
    assert forwarded and forwarded[0].metadata["x-agentmesh-delegation"]  # it went through the gateway


async def test_a_task_explanation_carries_its_sub_task_tree(console_mesh: ConsoleMesh) -> None:
    from agentmesh.v1 import task_pb2

    parent = await console_mesh.submit("console_parent", "fan out")
    assert (await console_mesh.wait(parent)).state == task_pb2.TASK_STATE_SUCCEEDED
    token = console_mesh.gateway.token(["tasks:read"])
    status, _, body = await _get(console_mesh, f"/api/tasks/{parent}", token=token)
    assert status == 200, body
    subtasks = body["explanation"]["subtasks"]
    assert len(subtasks) == 2
    assert {s["task"]["parent_step_id"] for s in subtasks} == {"spawn"}
    assert all(s["task"]["parent_task_id"] == parent for s in subtasks)
