"""Keepalive: a mesh server accepts the keepalive pings mesh channels send, so long idle streams stay open.

gRPC servers by default allow one ping per 5 minutes without data and answer more with GOAWAY "too_many_pings",
which ended the revocation feed, heartbeats and watches every few minutes. The test runs the production settings
scaled down 100x in time (client pings every 300 ms, the server permits one per 200 ms), keeping their names: an
option name gRPC core does not know is ignored silently, and then the stream dies here within a second or two.
The stream is grpc's own health ``Watch`` (grpcurl, load balancers), whose handler sends with ``context.write``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh import _channel, _server
from agentmesh._channel import create_channel
from agentmesh._health import wait_until_serving
from agentmesh._server import MeshServer

pytestmark = pytest.mark.asyncio


def _scaled(options: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The same options, every millisecond value 100x smaller."""
    return [(name, value // 100 if name.endswith("_ms") else value) for name, value in options]


async def test_an_idle_stream_outlives_many_keepalive_pings(
    mesh_settings: Any, issue_identity: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue_identity("service", "registry")
    issue_identity("client", "ops")
    monkeypatch.setattr(_server, "_KEEPALIVE_OPTIONS", _scaled(_server._KEEPALIVE_OPTIONS))
    monkeypatch.setattr(_channel, "_CHANNEL_OPTIONS", _scaled(_channel._CHANNEL_OPTIONS))
    server = MeshServer(name="registry", settings=mesh_settings.replace(readiness_interval=0.1), port=0, services=[])
    await server.start()
    channel = create_channel(server.address, mesh_settings, kind="client", name="ops")
    try:
        await wait_until_serving(channel)
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await stream.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        # About 13 client pings (300 ms apart) with no data on the stream: far past the 2 strikes a server
        # with the default policy tolerates.
        ended = asyncio.ensure_future(stream.read())
        done, _ = await asyncio.wait({ended}, timeout=4.0)
        if done:
            outcome = ended.exception() or ended.result()
            code = outcome.code() if isinstance(outcome, grpc.aio.AioRpcError) else outcome
            pytest.fail(f"the idle stream ended after keepalive pings: {code!r} ({getattr(outcome, 'details', lambda: '')()})")
        stream.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ended
    finally:
        await channel.close()
        await server.stop(grace=0.5)
