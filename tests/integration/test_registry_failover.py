"""Registry failover: clients given several replica addresses move to a live one, verified by identity.

A real agent process (``agentmesh agent run``) gets two replica addresses (or one DNS name with an A and an AAAA
record); the replica it heartbeats to is killed with SIGKILL. The agent's heartbeats re-home on the other replica within a second, without
registering again, and the agent never expires there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentmesh._channel import create_channel
from agentmesh._health import wait_until_serving
from agentmesh._registry_client import REGISTRY_IDENTITY, RegistryClient
from agentmesh._settings import Settings
from agentmesh.v1 import registry_pb2
from tests.fixtures.certs import IssueIdentity
from tests.fixtures.dns import dns_server
from tests.fixtures.registry import StartRegistry, make_card
from tests.integration.test_agent_cli import free_port
from tests.integration.test_registry import eventually

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL = 1.5


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTMESH_HOME": str(settings.home),
        "AGENTMESH_TRUST_DOMAIN": settings.trust_domain,
        "AGENTMESH_LOG_FORMAT": "text",
        **{f"AGENTMESH_{key.upper()}": value for key, value in extra.items()},
    }


class _Process:
    """A child process whose output is collected line by line (so its pipe never fills)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())

    def output(self) -> str:
        return "\n".join(self.lines)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.returncode is None:
            self.process.send_signal(sig)
            try:
                async with asyncio.timeout(15):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Awaitable[_Process]]]:
    started: list[_Process] = []

    async def start(*args: str, env: dict[str, str]) -> _Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmesh.cli", *args,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        started.append(_Process(process))
        return started[-1]

    yield start
    for child in reversed(started):
        await child.stop()


async def _serving(address: str, settings: Settings, child: _Process) -> None:
    async with create_channel(
        address, settings, kind="client", name="ops", server_identity=REGISTRY_IDENTITY
    ) as channel:
        try:
            await wait_until_serving(channel, within=90.0)
        except Exception:
            print(child.output())
            raise


async def test_an_agent_given_two_replicas_survives_a_sigkill_without_expiring(
    mesh_settings: Settings,
    issue_identity: IssueIdentity,
    spawn: Callable[..., Awaitable[_Process]],
    _postgres_migrated_pool: Any,
) -> None:
    issue_identity("service", "registry")
    issue_identity("client", "ops")
    issue_identity("agent", "testing/echo")
    with _postgres_migrated_pool.database() as url:
        fast = {"database_url": url, "lease_flush_interval": "0.1", "registry_poll_interval": "0.05"}
        ports = [free_port(), free_port()]
        replicas = [
            await spawn("registry", "--port", str(port), env=_env(mesh_settings, **fast)) for port in ports
        ]
        addresses = [f"127.0.0.1:{port}" for port in ports]
        for address, replica in zip(addresses, replicas, strict=True):
            await _serving(address, mesh_settings, replica)
        agent = await spawn(
            "agent", "run", "tests.integration.echo_agent", "--port", str(free_port()),
            env=_env(mesh_settings, registry_address=",".join(addresses), lease_ttl=str(LEASE_TTL)),
        )  # fmt: skip
        async with RegistryClient(mesh_settings, kind="client", name="ops", address=addresses[1]) as survivor:
            await _outlives_a_sigkill_of_its_replica(survivor, replicas[0])
        assert agent.output().count("registered instance") == 1, agent.output()
        await agent.stop()
        await replicas[1].stop()


async def _outlives_a_sigkill_of_its_replica(survivor: RegistryClient, replica: _Process) -> None:
    """The agent registers; ``replica`` (the one it heartbeats to) is SIGKILLed; its heartbeats reach ``survivor``
    within a second and it stays discoverable there for several lease lifetimes, never expiring."""

    async def discoverable() -> bool:
        answer = await survivor.discover(names=["testing/echo"])
        return len(answer.candidates) == 1

    await eventually(discoverable, 30.0, "the agent registering")
    ends: list[int] = []
    expiring = (registry_pb2.AGENT_EVENT_TYPE_EXPIRED, registry_pb2.AGENT_EVENT_TYPE_DEREGISTERED)

    async def watch() -> None:
        async for event in survivor.watch(namespace="testing"):
            if event.type in expiring:
                ends.append(event.type)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(LEASE_TTL)  # a few routine renewals through the replica about to die
    replica.process.send_signal(signal.SIGKILL)
    killed_at = time.time()

    async def renewed_by_survivor() -> bool:
        instance = (await survivor.get_agent("testing", "echo")).instances[0]
        renewed_at = instance.lease_expire_time.ToNanoseconds() / 1e9 - LEASE_TTL
        return renewed_at > killed_at

    await eventually(renewed_by_survivor, 1.0, "a heartbeat reaching the surviving replica")
    deadline = time.monotonic() + 3 * LEASE_TTL
    while time.monotonic() < deadline:  # several lease lifetimes on the survivor alone
        assert await discoverable(), "the agent vanished from the surviving replica"
        await asyncio.sleep(0.1)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    assert ends == []


async def test_an_ops_client_given_two_replicas_moves_on_when_one_stops(
    start_registry: StartRegistry, _postgres_migrated_pool: Any
) -> None:
    with _postgres_migrated_pool.database() as url:
        first = await start_registry(url)
        second = await start_registry(url)
        async with first.client("agent", "support/refunds") as agent:
            card = make_card("refunds")
            card.spiffe_id = "spiffe://agentmesh.test/agent/support/refunds"
            await agent.register(card)
        address = f"{first.address},{second.address}"
        async with second.client("client", "ops") as on_second:
            await eventually(lambda: _count(on_second), 2.0, "the registration reaching the second replica")
        async with RegistryClient(first.settings, kind="client", name="ops", address=address) as ops:
            assert await _count(ops)  # answered by the first replica (pick_first)
            await first.server.stop(grace=0)
            started = time.monotonic()
            assert await _count(ops)
            assert time.monotonic() - started < 1.0


async def _count(ops: RegistryClient) -> bool:
    return len((await ops.discover(names=["support/refunds"])).candidates) == 1


@pytest.mark.parametrize(
    ("first_host", "records"),
    [
        pytest.param("::1", ["127.0.0.1", "::1"], id="an-ipv4-and-an-ipv6-address"),
        # Where there is no IPv6 loopback: the same through two IPv4 loopback addresses (127.0.0.0/8 is loopback).
        pytest.param("127.0.0.2", ["127.0.0.1", "127.0.0.2"], id="two-ipv4-addresses"),
    ],
)
async def test_an_agent_given_one_dns_name_with_many_addresses_survives_a_sigkill(
    first_host: str,
    records: list[str],
    mesh_settings: Settings,
    issue_identity: IssueIdentity,
    spawn: Callable[..., Awaitable[_Process]],
    _postgres_migrated_pool: Any,
) -> None:
    """One DNS name, two records (A 127.0.0.1 and AAAA ::1, or A 127.0.0.1 and A 127.0.0.2), a replica behind each
    on the same port: the agent is given only the name (served by a test DNS server that gRPC's resolver is pointed
    at), is verified against the registry's SPIFFE identity rather than that name, and re-homes when its replica is
    SIGKILLed."""
    if not _can_listen(first_host):
        pytest.skip(f"cannot listen on {first_host} on this machine")
    first_address = f"[{first_host}]" if ":" in first_host else first_host
    issue_identity("service", "registry")
    issue_identity("client", "ops")
    issue_identity("agent", "testing/echo")
    port = free_port()
    with _postgres_migrated_pool.database() as url:
        fast = {"database_url": url, "lease_flush_interval": "0.1", "registry_poll_interval": "0.05"}
        async with dns_server({"replicas.agentmesh.test": records}) as dns:
            # The agent starts while only the first replica is up, so that is the one it heartbeats to.
            first = await spawn(
                "registry", "--port", str(port), env=_env(mesh_settings, bind_host=first_address, **fast)
            )
            await _serving(f"{first_address}:{port}", mesh_settings, first)
            name = f"dns://127.0.0.1:{dns.port}/replicas.agentmesh.test:{port}"
            agent = await spawn(
                "agent", "run", "tests.integration.echo_agent", "--port", str(free_port()),
                env=_env(mesh_settings, registry_address=name, lease_ttl=str(LEASE_TTL)),
            )  # fmt: skip
            second = await spawn(
                "registry", "--port", str(port), env=_env(mesh_settings, bind_host="127.0.0.1", **fast)
            )
            await _serving(f"127.0.0.1:{port}", mesh_settings, second)
            async with RegistryClient(mesh_settings, kind="client", name="ops", address=f"127.0.0.1:{port}") as survivor:
                await _outlives_a_sigkill_of_its_replica(survivor, first)
            assert ("replicas.agentmesh.test", 1) in dns.queries  # the name was looked up (A, and AAAA)
            assert ("replicas.agentmesh.test", 28) in dns.queries
            assert agent.output().count("registered instance") == 1, agent.output()
            await agent.stop()
            await second.stop()


def _can_listen(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True
