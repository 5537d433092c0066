"""``Registration``: keep one agent instance registered with the registry for as long as it serves.

Lifecycle: register (retrying with backoff while the registry is unreachable), heartbeat every
``lease_ttl / 3`` with the instance's state and load, register again when the registry no longer knows
the lease (``NOT_FOUND``: it expired or the registry lost it), and on stop report ``DRAINING`` and
deregister. Nothing here ever crashes the agent: a registry outage only delays (re)registration.

Heartbeats go over one long-lived ``StreamHeartbeats`` stream (a message on an open stream costs the
registry a fraction of a unary call). Routine renewals are sent unanswered (one message each); the first
heartbeat of a stream and every state change wait for the renewed lease. A stream the registry ends (a
refused heartbeat, a stopping replica) wakes the loop at once, which reacts as to a failed unary call; a
broken stream is reopened at the next heartbeat, after the same backoff as any failure. A registry that does not serve the stream (``UNIMPLEMENTED``, or an authorization
policy that predates it) gets unary ``Heartbeat`` calls instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agentmesh._errors import (
    AbortedError,
    DeadlineExceededError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
    UnimplementedError,
)
from agentmesh._registry_client import HeartbeatStream, RegistryClient
from agentmesh._settings import Settings
from agentmesh.resilience import RetryPolicy
from agentmesh.v1 import agent_pb2, registry_pb2

__all__ = ["Registration"]

logger = logging.getLogger(__name__)

# Registration never gives up; the policy only shapes the jittered wait between attempts.
_BACKOFF = RetryPolicy(initial_backoff=0.1, max_backoff=5.0)
_TRANSIENT = (UnavailableError, DeadlineExceededError, ResourceExhaustedError, AbortedError)
_STREAM_METHOD = "/agentmesh.v1.RegistryService/StreamHeartbeats"


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
        self._client: RegistryClient | None = None
        self._stream: HeartbeatStream | None = None
        self.streaming = True  # heartbeats over StreamHeartbeats; False once the registry turned it down
        self._reported: int = agent_pb2.SERVING_STATE_UNSPECIFIED  # state the registry acknowledged on this stream
        self._task: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self.lease_id = ""
        self.instance_id = ""
        self.registrations = 0  # how many times a lease was obtained (re-registrations included)
        self.failures = 0  # consecutive failed calls to the registry

    @property
    def registered(self) -> bool:
        """True while the instance holds a lease."""
        return self._registered.is_set()

    async def wait_registered(self) -> None:
        """Wait until the instance holds a lease (bound it with ``asyncio.timeout``)."""
        await self._registered.wait()

    def start(self) -> None:
        """Start registering and heartbeating in the background."""
        card = self._card()
        name = card.name
        identity = f"{card.namespace}/{card.name}"  # the agent's identity is derived from its card
        self._client = RegistryClient(self._settings, kind="agent", name=identity, address=self._address)
        self._task = asyncio.create_task(self._keep_registered(), name=f"{name}-registration")

    async def drain(self) -> None:
        """Tell the registry this instance is ``DRAINING`` so discovery stops sending it work."""
        await self._stop_loop()
        if self.lease_id:
            try:
                await self._heartbeat(agent_pb2.SERVING_STATE_DRAINING)
            except MeshError as exc:
                logger.warning("could not report DRAINING (%s); deregistering anyway", exc.code.name)

    async def stop(self) -> None:
        """Deregister (best effort: an unreachable registry lets the lease expire) and close the channel."""
        await self._stop_loop()
        if self._client is None:
            return
        if self.lease_id:
            try:
                await self._client.deregister(self.lease_id, deadline=self._deadline())
                logger.info("deregistered lease %s", self.lease_id)
            except MeshError as exc:
                logger.warning("deregistration failed (%s); the lease will expire", exc.code.name)
            self.lease_id = ""
            self._registered.clear()
        if self._stream is not None:
            await self._stream.close()
            self._stream = None
        await self._client.close()
        self._client = None

    async def _stop_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _keep_registered(self) -> None:
        while True:
            try:
                if not self.lease_id:
                    await self._register()
                else:
                    await self._heartbeat(self._state())
            except MeshError as exc:
                if isinstance(exc, NotFoundError) and self.lease_id:  # the lease expired or the registry lost it
                    logger.warning("registry no longer knows lease %s; registering again", self.lease_id)
                    self.lease_id = ""
                    self._registered.clear()
                    continue
                # A refusal (bad card, wrong identity) will not heal by itself: say so loudly, keep trying.
                level = logging.WARNING if isinstance(exc, _TRANSIENT) else logging.ERROR
                await self._back_off(level, f"{exc.code.name} {exc.message}")
                continue
            except Exception as exc:  # a bug must not silently end registration: log it and keep trying
                logger.exception("registration with %s failed unexpectedly", self._address)
                await self._back_off(logging.ERROR, type(exc).__name__)
                continue
            if self.failures:
                logger.info("registry at %s answers again after %d failed attempts", self._address, self.failures)
            self.failures = 0
            await self._pause(self._lease_ttl / 3)

    async def _pause(self, seconds: float) -> None:
        # Until the next heartbeat, or until the registry ends the stream (the next heartbeat then says why).
        stream = self._stream
        if not self.streaming or stream is None or stream.closed:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stream.wait_ended()

    async def _back_off(self, level: int, problem: str) -> None:
        self.failures += 1
        wait = min(_BACKOFF.backoff(self.failures), self._lease_ttl / 3)
        # Said once per outage (and again when it ends), not at every retry; a refusal keeps its ERROR level.
        if self.failures > 1 and level < logging.ERROR:
            level = logging.DEBUG
        logger.log(level, "registry at %s: %s; retrying in %.2fs", self._address, problem, wait)
        await asyncio.sleep(wait)

    async def _register(self) -> None:
        assert self._client is not None
        response = await self._client.register(self._card(), lease_ttl=self._settings.lease_ttl, deadline=self._deadline())
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
        assert self._client is not None
        if self.streaming:
            if self._stream is None or self._stream.closed:
                self._stream = self._client.heartbeat_stream()
                self._reported = agent_pb2.SERVING_STATE_UNSPECIFIED
            routine = state == self._reported == agent_pb2.SERVING_STATE_SERVING
            try:
                if routine:
                    await self._stream.renew(self.lease_id, state=state, load=self._load(), deadline=self._deadline())
                    return
                lease = await self._stream.heartbeat(
                    self.lease_id, state=state, load=self._load(), deadline=self._deadline()
                )
            except (UnimplementedError, PermissionDeniedError) as exc:
                if isinstance(exc, PermissionDeniedError) and exc.metadata.get("method") != _STREAM_METHOD:
                    raise  # the lease is not ours: the same refusal a unary heartbeat would get
                logger.info("registry at %s does not serve StreamHeartbeats (%s); heartbeating with unary calls",
                            self._address, exc.code.name)
                self.streaming = False
            else:
                self._reported = state
                self._adopt_ttl(lease)
                return
        lease = await self._client.heartbeat(self.lease_id, state=state, load=self._load(), deadline=self._deadline())
        self._adopt_ttl(lease)

    def _adopt_ttl(self, lease: registry_pb2.Lease) -> None:
        # The registry may clamp the requested TTL; heartbeat at a third of what it granted.
        if lease.HasField("ttl") and lease.ttl.ToNanoseconds() > 0:
            self._lease_ttl = lease.ttl.ToNanoseconds() / 1e9

    def _deadline(self) -> float:
        return min(self._settings.default_deadline, max(1.0, self._lease_ttl / 3))
