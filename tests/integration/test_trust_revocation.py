"""Revocation takes effect mesh-wide in seconds, by identity or by one certificate, and survives restarts.

Every workload is its own process: two registry replicas on one database, a trusted agent and a rogue agent
(``agentmesh agent run``). The test process plays the rogue's stolen certificate and the operator. Once an
operator revokes the rogue, its next call to either replica and to the trusted agent is refused within 2 s,
and its instance is gone from discovery on both replicas; unrevoking restores it; revoking one certificate
serial refuses that certificate only; a restarted registry, and a restarted agent that cannot reach any
registry, still refuse it, and servers keep following the set across registry restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from cryptography import x509

from agentmesh._channel import create_channel
from agentmesh._errors import (
    FailedPreconditionError,
    MeshError,
    PermissionDeniedError,
    UnauthenticatedError,
    from_rpc_error,
)
from agentmesh._health import wait_until_serving
from agentmesh._registry_client import REGISTRY_IDENTITY, RegistryClient
from agentmesh._settings import Settings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, registry_pb2
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.registry import RegistryReplica, make_card
from tests.integration.test_agent_cli import free_port
from tests.integration.test_registry import eventually
from tests.integration.test_registry_failover import _env, _Process, spawn  # noqa: F401  (fixture)

ROGUE = "rogue/echo"
TRUSTED = "trusted/echo"
WITHIN = 2.0  # seconds: the promise


def _serial_of(settings: Settings, name: str) -> str:
    pem = (settings.home / "certs" / f"agent-{name.replace('/', '.')}.pem").read_bytes()
    return f"{x509.load_pem_x509_certificate(pem).serial_number:x}"


class Rogue:
    """Calls made with the rogue agent's certificate: to each registry replica and to the trusted agent."""

    def __init__(self, settings: Settings, replicas: list[str], trusted_agent: str) -> None:
        self.settings, self.replicas, self.trusted_agent = settings, replicas, trusted_agent

    async def call_registry(self, address: str) -> None:
        async with RegistryClient(self.settings, kind="agent", name=ROGUE, address=address) as client:
            await client.get_agent("trusted", "echo", deadline=5.0)

    async def call_agent(self) -> None:
        async with create_channel(self.trusted_agent, self.settings, kind="agent", name=ROGUE) as channel:
            try:
                await agent_pb2_grpc.AgentServiceStub(channel).Describe(agent_pb2.DescribeRequest(), timeout=5.0)
            except Exception as exc:  # grpc.aio.AioRpcError
                raise from_rpc_error(exc) from None  # type: ignore[arg-type]

    def calls(self) -> list[Callable[[], Awaitable[None]]]:
        return [*(lambda a=a: self.call_registry(a) for a in self.replicas), self.call_agent]


async def _refused_within(
    call: Callable[[], Awaitable[None]], error: type[MeshError], within: float, since: float | None = None
) -> float:
    """Seconds from ``since`` (default: now) until ``call`` fails with ``error``; fails the test after ``within``."""
    started = time.monotonic() if since is None else since
    while True:
        try:
            await call()
        except error as exc:
            assert "revoked" in exc.message, exc.message
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"still accepted after {within}s"
        await asyncio.sleep(0.02)


async def _accepted_within(call: Callable[[], Awaitable[None]], within: float) -> None:
    started = time.monotonic()
    while True:
        try:
            await call()
            return
        except (PermissionDeniedError, UnauthenticatedError):
            assert time.monotonic() - started < within, f"still refused after {within}s"
            await asyncio.sleep(0.05)


async def _discoverable(settings: Settings, address: str, agent: str) -> bool:
    async with RegistryClient(settings, kind="client", name="ops", address=address) as ops:
        return bool((await ops.discover(names=[agent])).candidates)


async def _serving(address: str, settings: Settings, child: _Process) -> None:
    # Generous: on a machine shared with other work a replica's start can take tens of seconds.
    async with create_channel(
        address, settings, kind="client", name="ops", server_identity=REGISTRY_IDENTITY
    ) as channel:
        try:
            await wait_until_serving(channel, within=90.0)
        except MeshError:
            print(child.output())
            raise


async def _cli(start: Callable[..., Awaitable[_Process]], env: dict[str, str], *args: str) -> str:
    child = await start("agents", *args, env=env)
    async with asyncio.timeout(30):
        code = await child.process.wait()
    await child.stop()
    assert code == 0, child.output()
    return child.output()


async def test_a_revoked_agent_is_refused_mesh_wide_within_two_seconds(
    mesh_settings: Settings,
    issue_identity: IssueIdentity,
    spawn: Callable[..., Awaitable[_Process]],  # noqa: F811  (the fixture imported above)
    migrated_database_url: str,
) -> None:
    for kind, name in (("service", "registry"), ("client", "ops"), ("agent", TRUSTED), ("agent", ROGUE)):
        issue_identity(kind, name)
    settings = mesh_settings
    fast = {"database_url": migrated_database_url, "lease_flush_interval": "0.1", "registry_poll_interval": "0.05"}
    ports = [free_port(), free_port()]
    replica_env = _env(settings, **fast)
    replicas = [await spawn("registry", "--port", str(port), env=replica_env) for port in ports]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    for address, child in zip(addresses, replicas, strict=True):
        await _serving(address, settings, child)
    agent_env = _env(settings, registry_address=",".join(addresses), lease_ttl="3")
    agent_ports = {TRUSTED: free_port(), ROGUE: free_port()}
    agents = {
        name: await spawn(
            "agent", "run", "tests.integration.echo_agent", "--namespace", name.split("/")[0],
            "--port", str(port), env=agent_env,
        )
        for name, port in agent_ports.items()
    }
    for address in addresses:
        for name in agents:
            await eventually(lambda a=address, n=name: _discoverable(settings, a, n), 60.0, f"{name} on {address}")
    rogue = Rogue(settings, addresses, f"127.0.0.1:{agent_ports[TRUSTED]}")
    for call in rogue.calls():
        await call()  # before: the rogue is a normal member of the mesh

    # Revoke the identity: every server refuses it within 2 s; its instance leaves discovery on both replicas.
    async with RegistryClient(settings, kind="client", name="ops", address=addresses[0]) as ops:
        reply = await ops.revoke(spiffe_id=f"spiffe://{settings.trust_domain}/agent/{ROGUE}", reason="key leaked")
    revoked_at = time.monotonic()
    assert reply.removed_instances == 1
    delays = [await _refused_within(call, PermissionDeniedError, WITHIN, revoked_at) for call in rogue.calls()]
    print(f"refused after (s, replica 1, replica 2, agent): {[round(d, 3) for d in delays]}")
    for address in addresses:
        await eventually(lambda a=address: _not(_discoverable(settings, a, ROGUE)), WITHIN, f"rogue gone on {address}")
        assert await _discoverable(settings, address, TRUSTED)
    listed = await _cli(spawn, agent_env, "revocations", "--json", "--address", addresses[1])
    assert f"agent/{ROGUE}" in listed and "key leaked" in listed

    # Unrevoke (the operator's CLI): calls pass again, and the rogue's process registers again by itself.
    await _cli(spawn, agent_env, "unrevoke", ROGUE, "--address", addresses[1])
    for call in rogue.calls():
        await _accepted_within(call, WITHIN)
    for address in addresses:
        await eventually(lambda a=address: _discoverable(settings, a, ROGUE), 15.0, f"rogue back on {address}")

    # Revoke one certificate by serial: that certificate is refused everywhere, and so are the instances it
    # registered; a newly issued certificate of the same identity works.
    serial = _serial_of(settings, ROGUE)
    await _cli(spawn, agent_env, "revoke", "--serial", serial, "--address", addresses[0])
    for call in rogue.calls():
        await _refused_within(call, UnauthenticatedError, WITHIN)
    for address in addresses:
        await eventually(lambda a=address: _not(_discoverable(settings, a, ROGUE)), WITHIN, f"rogue gone on {address}")
    issue_identity("agent", ROGUE, ttl=timedelta(hours=1))  # rotated: a new serial
    for call in rogue.calls():
        await call()
    async with RegistryClient(settings, kind="client", name="ops", address=addresses[1]) as ops:
        await ops.unrevoke(certificate_serial=serial)

    # Revocations survive restarts: a restarted replica, and a restarted agent that reaches no registry.
    async with RegistryClient(settings, kind="client", name="ops", address=addresses[1]) as ops:
        await ops.revoke(spiffe_id=f"spiffe://{settings.trust_domain}/agent/{ROGUE}", reason="for good")
    for call in rogue.calls():
        await _refused_within(call, PermissionDeniedError, WITHIN)
    await replicas[0].stop()
    replicas[0] = await spawn("registry", "--port", str(ports[0]), env=replica_env)
    await _serving(addresses[0], settings, replicas[0])
    with pytest.raises(PermissionDeniedError, match="revoked"):
        await rogue.call_registry(addresses[0])
    # The other replica goes too: servers following the set reconnect to the restarted one and keep following.
    await replicas[1].stop()
    async with RegistryClient(settings, kind="client", name="ops", address=addresses[0]) as ops:
        await ops.unrevoke(spiffe_id=f"spiffe://{settings.trust_domain}/agent/{ROGUE}")
        await _accepted_within(rogue.call_agent, 2 * WITHIN)  # at most one reconnection backoff (2 s) more
        await ops.revoke(spiffe_id=f"spiffe://{settings.trust_domain}/agent/{ROGUE}", reason="for good")
    await _refused_within(rogue.call_agent, PermissionDeniedError, WITHIN)
    for child in replicas:
        await child.stop()
    await agents[TRUSTED].stop()
    agents[TRUSTED] = await spawn(
        "agent", "run", "tests.integration.echo_agent", "--namespace", "trusted",
        "--port", str(agent_ports[TRUSTED]), env=agent_env,
    )  # fmt: skip
    async with create_channel(rogue.trusted_agent, settings, kind="client", name="ops") as channel:
        await wait_until_serving(channel, within=60.0)
    with pytest.raises(PermissionDeniedError, match="revoked"):
        await rogue.call_agent()


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_streams_a_revoked_identity_holds_open_are_ended(registry: RegistryReplica) -> None:
    triage = f"spiffe://{registry.settings.trust_domain}/agent/support/triage"
    async with registry.client("agent", "support/triage") as agent, registry.client("client", "ops") as ops:
        await agent.register(make_card("triage"))
        events = agent.watch()
        assert (await anext(events)).type == registry_pb2.AGENT_EVENT_TYPE_SNAPSHOT
        reply = await ops.revoke(spiffe_id=triage, reason="compromised")
        assert reply.removed_instances == 1 and reply.revocation.revoked_by.endswith("/client/ops")
        with pytest.raises(PermissionDeniedError, match="revoked"):
            async with asyncio.timeout(WITHIN):
                async for _ in events:
                    pass
        with pytest.raises(PermissionDeniedError, match="revoked"):
            await agent.discover()
        again = await ops.revoke(spiffe_id=triage)  # revoking twice keeps the first revocation
        assert again.revocation.reason == "compromised" and again.removed_instances == 0
        listed = await ops.list_revocations()
        assert [r.spiffe_id for r in listed.revocations] == [triage]
        with pytest.raises(FailedPreconditionError, match="itself"):
            await ops.revoke(spiffe_id=f"spiffe://{registry.settings.trust_domain}/client/ops")
        with pytest.raises(PermissionDeniedError):
            await agent.list_revocations()  # still revoked
    async with registry.client("agent", "support/refunds") as other:
        with pytest.raises(PermissionDeniedError, match="RevokeIdentity"):
            await other.revoke(spiffe_id=triage)  # only ops clients revoke
