"""``Registration``: keep one agent instance registered with the registry for as long as it serves.

Lifecycle: register (retrying with backoff while the registry is unreachable), heartbeat every
``lease_ttl / 3`` with the instance's state and load, register again when the registry no longer knows
the lease (``NOT_FOUND``: it expired or the registry lost it), and on stop report ``DRAINING`` and
deregister. Nothing here ever crashes the agent: a registry outage only delays (re)registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import grpc
from google.protobuf import duration_pb2

from agentmesh._channel import create_channel
from agentmesh._settings import Settings
from agentmesh.v1 import agent_pb2, registry_pb2, registry_pb2_grpc

__all__ = ["Registration"]

logger = logging.getLogger(__name__)

_INITIAL_BACKOFF = 0.1
_MAX_BACKOFF = 5.0
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)


class Registration:
    """Registers ``card`` at ``registry_address`` and keeps its lease alive in the background."""

    def __init__(
        self,
        *,
        card: Callable[[], agent_pb2.AgentCard],
        settings: Settings,
        registry_address: str,
        state: Callable[[], int],
        load: Callable[[], float],
    ) -> None:
        self._card = card
        self._settings = settings
        self._address = registry_address
        self._state = state
        self._load = load
        self._lease_ttl = settings.lease_ttl
        self._channel: grpc.aio.Channel | None = None
        self._stub: registry_pb2_grpc.RegistryServiceStub | None = None
        self._task: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self.lease_id = ""
        self.instance_id = ""
        self.registrations = 0  # how many times a lease was obtained (re-registrations included)

    @property
    def registered(self) -> bool:
        """True while the instance holds a lease."""
        return self._registered.is_set()

    async def wait_registered(self) -> None:
        """Wait until the instance holds a lease (bound it with ``asyncio.timeout``)."""
        await self._registered.wait()

    def start(self) -> None:
        """Start registering and heartbeating in the background."""
        name = self._card().name
        self._channel = create_channel(self._address, self._settings, kind="agent", name=name)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._task = asyncio.create_task(self._keep_registered(), name=f"{name}-registration")

    async def drain(self) -> None:
        """Tell the registry this instance is ``DRAINING`` so discovery stops sending it work."""
        await self._stop_loop()
        if self.lease_id:
            with contextlib.suppress(grpc.RpcError):
                await self._heartbeat(agent_pb2.SERVING_STATE_DRAINING)

    async def stop(self) -> None:
        """Deregister (best effort: an unreachable registry lets the lease expire) and close the channel."""
        await self._stop_loop()
        if self.lease_id and self._stub is not None:
            try:
                await self._stub.DeregisterAgent(
                    registry_pb2.DeregisterAgentRequest(lease_id=self.lease_id), timeout=self._deadline()
                )
                logger.info("deregistered lease %s", self.lease_id)
            except grpc.RpcError as exc:
                logger.warning("deregistration failed (%s); the lease will expire", exc.code())
            self.lease_id = ""
            self._registered.clear()
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None

    async def _stop_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _keep_registered(self) -> None:
        backoff = _INITIAL_BACKOFF
        while True:
            try:
                if not self.lease_id:
                    await self._register()
                else:
                    await self._heartbeat(self._state())
                backoff = _INITIAL_BACKOFF
                await asyncio.sleep(self._lease_ttl / 3)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
                if code == grpc.StatusCode.NOT_FOUND and self.lease_id:
                    logger.warning("registry lost lease %s; registering again", self.lease_id)
                    self.lease_id = ""
                    self._registered.clear()
                    continue
                # A refusal (bad card, wrong identity) will not heal by itself: say so loudly, keep trying.
                level = logging.WARNING if code in _TRANSIENT else logging.ERROR
                logger.log(level, "registry at %s: %s %s; retrying in %.1fs", self._address, code.name, _details(exc), backoff)
                # Full jitter: many agents restarting together must not hammer the registry in step.
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(_MAX_BACKOFF, backoff * 2, self._lease_ttl / 3)

    async def _register(self) -> None:
        assert self._stub is not None
        ttl = duration_pb2.Duration()
        ttl.FromNanoseconds(int(self._settings.lease_ttl * 1e9))
        response = await self._stub.RegisterAgent(
            registry_pb2.RegisterAgentRequest(card=self._card(), lease_ttl=ttl), timeout=self._deadline()
        )
        self.lease_id = response.lease.lease_id
        self.instance_id = response.instance.instance_id
        self._adopt_ttl(response.lease)
        self.registrations += 1
        self._registered.set()
        logger.info("registered instance %s with lease %s (ttl %.1fs)", self.instance_id, self.lease_id, self._lease_ttl)
        state = self._state()
        if state != agent_pb2.SERVING_STATE_SERVING:
            await self._heartbeat(state)  # registration says nothing about readiness; report it at once

    async def _heartbeat(self, state: int) -> None:
        assert self._stub is not None
        response = await self._stub.Heartbeat(
            registry_pb2.HeartbeatRequest(lease_id=self.lease_id, state=state, load=self._load()),  # type: ignore[arg-type]
            timeout=self._deadline(),
        )
        self._adopt_ttl(response.lease)

    def _adopt_ttl(self, lease: registry_pb2.Lease) -> None:
        # The registry may clamp the requested TTL; heartbeat at a third of what it granted.
        if lease.HasField("ttl") and lease.ttl.ToNanoseconds() > 0:
            self._lease_ttl = lease.ttl.ToNanoseconds() / 1e9

    def _deadline(self) -> float:
        return min(self._settings.default_deadline, max(1.0, self._lease_ttl / 3))


def _details(exc: grpc.RpcError) -> str:
    return (exc.details() or "") if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
