"""The planner and gateway start like every mesh server: mTLS, health that follows their dependencies,
reflection for grpcurl, precise statuses on bad input, and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from agentmesh._channel import create_channel
from agentmesh._health import check_health, wait_until_serving
from agentmesh._server import MeshServer
from agentmesh._settings import Settings
from agentmesh.services.gateway.server import build_server as build_gateway
from agentmesh.services.planner.server import build_server as build_planner
from agentmesh.storage import upgrade
from agentmesh.v1 import audit_pb2, conversation_pb2, task_pb2


@pytest.fixture
async def planner(mesh_settings: Settings, issue_identity, migrated_database_url: str) -> AsyncIterator[MeshServer]:
    issue_identity("service", "planner")
    issue_identity("client", "ops")
    server = build_planner(mesh_settings.replace(database_url=migrated_database_url), port=0)
    async with server:
        yield server


@pytest.fixture
async def ops_channel(planner: MeshServer, mesh_settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    channel = create_channel(planner.address, mesh_settings, kind="client", name="ops")
    await wait_until_serving(channel, within=20)
    yield channel
    await channel.close()


def _reflected_services(address: str, settings: Settings) -> list[str]:
    """What `grpcurl ... list` prints, through the same reflection protocol grpcurl uses."""
    certs = settings.home / "certs"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(settings.home / "ca" / "ca.pem").read_bytes(),
        private_key=(certs / "client-ops-key.pem").read_bytes(),
        certificate_chain=(certs / "client-ops.pem").read_bytes(),
    )
    with grpc.secure_channel(address, credentials) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        # grpcurl describe: the full method descriptor is reachable through reflection.
        described = database.FindFileContainingSymbol("agentmesh.v1.TaskService")
        assert any(s.name == "TaskService" for s in described.service)
        return services


async def test_planner_lists_its_services_over_reflection(planner: MeshServer, ops_channel, mesh_settings) -> None:
    services = await asyncio.to_thread(_reflected_services, planner.address, mesh_settings)
    assert services == [
        "agentmesh.v1.AuditService",
        "agentmesh.v1.ConversationService",
        "agentmesh.v1.TaskService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert await check_health(ops_channel, "agentmesh.v1.TaskService") == "SERVING"


async def test_every_planner_rpc_is_served(ops_channel: grpc.aio.Channel) -> None:
    # Each RPC of the planner's contract answers an empty request with something other than UNIMPLEMENTED.

    services = [
        task_pb2.DESCRIPTOR.services_by_name["TaskService"],
        conversation_pb2.DESCRIPTOR.services_by_name["ConversationService"],
        audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
    ]
    for service in services:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            if method.server_streaming:
                stream = ops_channel.unary_stream(path)(b"", timeout=2)
                call = stream.read()
            else:
                call = ops_channel.unary_unary(path)(b"", timeout=5)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                assert exc.code() != grpc.StatusCode.UNIMPLEMENTED, f"{path}: {exc.details()}"


async def test_malformed_request_is_invalid_argument_not_a_traceback(ops_channel: grpc.aio.Channel) -> None:
    garbage = ops_channel.unary_unary("/agentmesh.v1.TaskService/GetTask")  # raw bytes in, raw bytes out
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await garbage(b"\xff\xff\xff\xff", timeout=5)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = failed.value.details() or ""
    assert "is not a valid message" in details and "Traceback" not in details


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_planner_is_not_serving_until_its_database_is_migrated(
    engine: str, mesh_settings: Settings, issue_identity, request: pytest.FixtureRequest, tmp_path
) -> None:
    issue_identity("service", "planner")
    issue_identity("client", "ops")
    if engine == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        url = request.getfixturevalue("postgres_server").url()
        url = url.rsplit("/", 1)[0] + "/postgres"
    settings = mesh_settings.replace(database_url=url, readiness_interval=0.05)
    async with build_planner(settings, port=0) as server:
        channel = create_channel(server.address, settings, kind="client", name="ops")
        try:
            for _ in range(5):  # several readiness rounds: it must stay NOT_SERVING
                assert await check_health(channel) == "NOT_SERVING"
                await asyncio.sleep(settings.readiness_interval)
            await asyncio.to_thread(upgrade, url)
            await wait_until_serving(channel, within=20)
        finally:
            await channel.close()


async def test_gateway_is_not_serving_until_the_planner_is(
    planner: MeshServer, mesh_settings: Settings, issue_identity
) -> None:
    issue_identity("service", "gateway")
    # The gateway writes audit records, so it also needs the (migrated) database the planner uses.
    mesh_settings = mesh_settings.replace(database_url=planner.settings.database_url)
    unreachable = mesh_settings.replace(planner_address="127.0.0.1:1", readiness_interval=0.05)
    async with build_gateway(unreachable, port=0) as gateway:
        channel = create_channel(gateway.address, mesh_settings, kind="client", name="ops")
        try:
            assert await check_health(channel) == "NOT_SERVING"
        finally:
            await channel.close()
    reachable = mesh_settings.replace(planner_address=planner.address, readiness_interval=0.05)
    async with build_gateway(reachable, port=0) as gateway:
        channel = create_channel(gateway.address, mesh_settings, kind="client", name="ops")
        try:
            await wait_until_serving(channel, within=20)
        finally:
            await channel.close()


async def test_planner_process_stops_cleanly_on_sigterm(mesh_settings: Settings, issue_identity, tmp_path) -> None:
    issue_identity("service", "planner")
    issue_identity("client", "ops")
    url = f"sqlite:///{tmp_path / 'mesh.db'}"
    await asyncio.to_thread(upgrade, url)
    from agentmesh.inference import free_port

    port = free_port()
    env = {**os.environ, "AGENTMESH_HOME": str(mesh_settings.home), "AGENTMESH_DATABASE_URL": url,
           "AGENTMESH_TRUST_DOMAIN": mesh_settings.trust_domain}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli", "planner", "--port", str(port),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    channel = create_channel(f"127.0.0.1:{port}", mesh_settings, kind="client", name="ops")
    try:
        await wait_until_serving(channel, within=30)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        await channel.close()
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, output.decode()
    assert "Traceback" not in output.decode()
