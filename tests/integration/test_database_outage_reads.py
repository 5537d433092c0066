"""PostgreSQL stopped under a planner: the audit trail's reads (``agentmesh audit list|verify``) answer
UNAVAILABLE with a retry hint, not INTERNAL; health says NOT_SERVING meanwhile, and both recover without a
restart once the database is back."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agentmesh._channel import create_channel
from agentmesh._health import check_health
from agentmesh._settings import Settings
from agentmesh.cli import main
from agentmesh.resilience import _breaker
from agentmesh.v1 import audit_pb2, audit_pb2_grpc
from tests.fixtures.planner import StartPlanner
from tests.fixtures.registry import StartRegistry
from tests.integration.test_planner_crash import RestartablePostgres

pytestmark = pytest.mark.postgres

_AWAY = "AuditService cannot reach its database right now; retry in a few seconds"  # no host, no port


def _fresh_process() -> None:
    """Forget the process-wide circuit breakers: an operator's CLI call or health probe is a process of its own."""
    _breaker._breakers.clear()


async def _health(planner: str, settings: Settings, want: str, within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            _fresh_process()
            async with create_channel(planner, settings, kind="client", name="ops") as channel:
                if await check_health(channel) == want:
                    return
            await asyncio.sleep(0.2)


async def test_audit_reads_are_unavailable_while_postgres_is_down_and_recover_after(
    start_registry: StartRegistry,
    start_planner: StartPlanner,
    mesh_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = await asyncio.to_thread(RestartablePostgres)
    try:
        url = await asyncio.to_thread(server.migrated, "planner")
        registry = await start_registry(url)
        planner = await start_planner(url, registry.address)
        monkeypatch.setenv("AGENTMESH_HOME", str(mesh_settings.home))
        monkeypatch.setenv("AGENTMESH_TRUST_DOMAIN", mesh_settings.trust_domain)
        monkeypatch.setenv("AGENTMESH_PLANNER_ADDRESS", planner.address)
        monkeypatch.delenv("AGENTMESH_TOKEN", raising=False)

        await asyncio.to_thread(server.stop)
        for method, request in (
            ("ListAuditRecords", audit_pb2.ListAuditRecordsRequest()),
            ("VerifyAuditChain", audit_pb2.VerifyAuditChainRequest()),
        ):
            _fresh_process()
            async with create_channel(planner.address, mesh_settings, kind="client", name="ops") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await getattr(audit_pb2_grpc.AuditServiceStub(channel), method)(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
            assert caught.value.details() == _AWAY
        for argv in (["audit", "verify"], ["audit", "list"]):
            capsys.readouterr()
            _fresh_process()
            assert await asyncio.to_thread(main, argv) == 1
            err = capsys.readouterr().err
            assert err == f"agentmesh audit: {_AWAY}\n"
        await _health(planner.address, mesh_settings, "NOT_SERVING", within=15)

        await asyncio.to_thread(server.start)
        await _health(planner.address, mesh_settings, "SERVING", within=30)
        capsys.readouterr()
        _fresh_process()
        assert await asyncio.to_thread(main, ["audit", "verify"]) == 0, capsys.readouterr().err
    finally:
        await asyncio.to_thread(server.remove)
