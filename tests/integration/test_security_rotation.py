"""Certificates and the trust bundle rotate on disk while clients keep calling: no call fails, no restart.

The story: a server runs with a certificate from CA 1. Operators roll out CA 2 by first publishing a
bundle that trusts both, then replacing the server's key and certificate (key first, as a careless copy
would) with ones issued by CA 2. A client opening a new connection for every call, and another on one
long-lived connection, never see a failure; afterwards the server demonstrably presents the CA 2
certificate and accepts CA 2 client certificates.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh._server import MeshServer
from agentmesh._settings import Settings
from agentmesh.security import CertificateAuthority, channel_credentials, write_public_file

TD = "agentmesh.test"


class _Caller:
    """Keeps calling Health/Check until stopped: one channel per call, plus one long-lived channel."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.address = address
        self.settings = settings
        self.calls = 0
        self.failures: list[str] = []
        self.progress = asyncio.Event()
        self.stopped = False

    def _channel(self) -> grpc.aio.Channel:
        # Bare mTLS channels: create_channel's retries would hide a failed handshake.
        return grpc.aio.secure_channel(self.address, channel_credentials(self.settings, "client", "ops"))

    async def run(self) -> None:
        async with self._channel() as steady:
            while not self.stopped:
                async with self._channel() as fresh:
                    for channel in (fresh, steady):
                        try:
                            await health_pb2_grpc.HealthStub(channel).Check(
                                health_pb2.HealthCheckRequest(), timeout=5
                            )
                        except grpc.aio.AioRpcError as exc:
                            self.failures.append(f"{exc.code().name}: {exc.details()}")
                        self.calls += 1
                self.progress.set()

    async def calls_made(self, count: int) -> None:
        """Wait until ``count`` more calls have been made."""
        target = self.calls + count
        while self.calls < target:
            self.progress.clear()
            await asyncio.wait_for(self.progress.wait(), timeout=10)


async def _check_once(address: str, settings: Settings, kind: str, name: str) -> None:
    # A bare channel (no retries or breaker): the handshake result is what we want to see.
    async with grpc.aio.secure_channel(address, channel_credentials(settings, kind, name)) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_server_certificate_and_trust_bundle_rotate_without_a_failed_call(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca1 = CertificateAuthority.init(home, TD)
    ca1.issue("service", "rotating")
    ca1.issue("client", "ops")
    ca1_only = tmp_path / "ca1.pem"
    shutil.copy(ca1.ca_path, ca1_only)
    ca2 = CertificateAuthority.init(tmp_path / "ca2-home", TD)
    settings = Settings(home=home, trust_domain=TD, shutdown_grace=1.0)

    async with MeshServer(name="rotating", settings=settings, port=0, services=[]) as server:
        caller = _Caller(server.address, settings)
        calling = asyncio.create_task(caller.run())
        try:
            await caller.calls_made(10)
            # 1. Publish a bundle trusting CA 1 and CA 2 (servers and clients read the same file here).
            write_public_file(ca1.ca_path, ca1.ca_path.read_bytes() + ca2.ca_path.read_bytes())
            await caller.calls_made(10)
            # 2. Replace the server key first: the pair no longer matches, the server must keep the old one.
            staged = ca2.issue("service", "rotating", out_dir=tmp_path / "staged")
            shutil.copy(staged.key_path, home / "certs" / "service-rotating-key.pem")
            await caller.calls_made(10)
            # 3. Then the certificate: the server now presents CA 2's certificate.
            shutil.copy(staged.cert_path, home / "certs" / "service-rotating.pem")
            await caller.calls_made(10)
        finally:
            caller.stopped = True
            await calling

        assert caller.failures == []
        assert caller.calls >= 40
        # The server really switched: a client trusting only CA 1 can no longer verify it...
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check_once(server.address, settings.replace(ca_file=str(ca1_only)), "client", "ops")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # ...and it trusts the new bundle: a client with a CA 2 certificate is accepted.
        ca2_client = ca2.issue("client", "ops2", out_dir=home / "certs")
        assert ca2_client.spiffe_id == f"spiffe://{TD}/client/ops2"
        await _check_once(server.address, settings, "client", "ops2")
