"""The mesh is for gRPC clients in any language: a Node.js client (@grpc/grpc-js, protos loaded at run time)
calls the registry over mTLS, and the registry describes itself over reflection as grpcurl would see it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.fixtures.registry import RegistryReplica, make_card

NODE_CLIENT = Path(__file__).resolve().parents[1] / "node" / "registry_client.js"


async def test_node_client_calls_health_and_the_registry(registry: RegistryReplica) -> None:
    node = shutil.which("node")
    assert node, "Node.js is missing: `make system-deps` installs it"
    assert (NODE_CLIENT.parents[1] / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make node-deps`"
    async with registry.client("agent", "support/triage") as agent:
        await agent.register(make_card("triage", trust_domain=registry.settings.trust_domain))
    certs = registry.settings.home / "certs"
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_CLIENT), registry.address, str(registry.settings.home / "ca" / "ca.pem"),
        str(certs / "client-ops.pem"), str(certs / "client-ops-key.pem"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    reply = json.loads(stdout.decode().strip().splitlines()[-1])
    assert reply["health"] == "SERVING"
    assert reply["registryHealth"] == "SERVING"
    assert reply["instances"] == ["support/triage@1.0.0"]
    assert reply["missing"]["code"] == "NOT_FOUND"
    assert "no-such-agent" in reply["missing"]["details"]


def _list_and_describe(address: str, home: Path) -> tuple[list[str], list[str]]:
    """`grpcurl list` and `grpcurl describe agentmesh.v1.RegistryService`, over the reflection protocol."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(home / "ca" / "ca.pem").read_bytes(),
        private_key=(home / "certs" / "client-ops-key.pem").read_bytes(),
        certificate_chain=(home / "certs" / "client-ops.pem").read_bytes(),
    )
    with grpc.secure_channel(address, credentials) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        described = database.FindFileContainingSymbol("agentmesh.v1.RegistryService")
        methods = [m.name for s in described.service if s.name == "RegistryService" for m in s.method]
    return services, methods


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_registry_lists_itself_over_reflection(registry: RegistryReplica) -> None:
    services, methods = await asyncio.to_thread(_list_and_describe, registry.address, registry.settings.home)
    assert services == ["agentmesh.v1.RegistryService", "grpc.health.v1.Health",
                        "grpc.reflection.v1alpha.ServerReflection"]
    for rpc in ("RegisterAgent", "Heartbeat", "DeregisterAgent", "GetAgent", "ListAgents", "DiscoverAgents",
                "WatchAgents"):
        assert rpc in methods
