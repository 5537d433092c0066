"""The console's only way into the mesh: the gateway's public gRPC port, called with the browser's own token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc

from agentmesh.v1 import registry_pb2_grpc, task_pb2_grpc

__all__ = ["GatewayClient"]


class GatewayClient:
    """One lazily opened channel to the gateway (TLS trusting ``ca_file``; plaintext when ``ca_file`` is None).

    ``address`` may be a callable, for a gateway whose port is known only once it has started.
    """

    def __init__(self, address: str | Callable[[], str], ca_file: Path | None) -> None:
        self._address = address
        self._ca_file = ca_file
        self._channel: grpc.aio.Channel | None = None

    @property
    def address(self) -> str:
        """host:port of the gateway's public port."""
        return self._address() if callable(self._address) else self._address

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._ca_file is None:
                self._channel = grpc.aio.insecure_channel(self.address)
            else:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._ca_file.read_bytes())
                self._channel = grpc.aio.secure_channel(self.address, credentials)
        return self._channel

    @property
    def registry(self) -> registry_pb2_grpc.RegistryServiceAsyncStub:
        """RegistryService stub (the gateway serves its reads)."""
        return registry_pb2_grpc.RegistryServiceStub(self._open())

    @property
    def tasks(self) -> task_pb2_grpc.TaskServiceAsyncStub:
        """TaskService stub."""
        return task_pb2_grpc.TaskServiceStub(self._open())

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
