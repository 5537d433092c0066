"""``AgentRuntime`` and ``run_agent``: serve an agent, keep it registered, drain it gracefully on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time

from agentmesh import telemetry
from agentmesh._server import MeshServer, bind
from agentmesh._settings import Settings
from agentmesh.agent._agent import Agent
from agentmesh.agent._idempotency import IdempotencyCache
from agentmesh.agent._registration import Registration
from agentmesh.agent._runner import InvocationResult, SkillRunner
from agentmesh.agent._servicer import AgentServicer, build_card
from agentmesh.security import DelegationVerifier, agent_spiffe_id
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["AgentRuntime", "run_agent"]

logger = logging.getLogger(__name__)

AGENT_SERVICE = "agentmesh.v1.AgentService"
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


class AgentRuntime:
    """One served agent instance: its gRPC server, its registration, and its graceful stop.

    ::

        async with AgentRuntime(Triage(settings), settings=settings, register=False) as runtime:
            ...  # call runtime.address

    ``stop()`` drains: new calls get ``UNAVAILABLE``, health turns NOT_SERVING, the registry hears
    ``DRAINING``, in-flight calls finish (up to ``settings.shutdown_grace``), then the instance deregisters
    and the server stops.
    """

    def __init__(
        self,
        agent: Agent,
        *,
        settings: Settings | None = None,
        port: int | None = None,
        registry_address: str | None = None,
        register: bool = True,
    ) -> None:
        self.agent = agent
        self.settings = settings if settings is not None else agent.settings
        self.runner = SkillRunner(
            agent,
            cache=IdempotencyCache[InvocationResult](
                max_entries=self.settings.idempotency_cache_size, ttl=self.settings.idempotency_ttl
            ),
        )
        # The identity is derived from the card (the registry accepts the card from this identity only).
        self.identity_name = f"{agent.card.namespace}/{agent.card.name}"
        self.spiffe_id = agent_spiffe_id(self.settings.trust_domain, agent.card.namespace, agent.card.name)
        # Delegation tokens must be addressed to this agent's own identity.
        self.runner.verifier = DelegationVerifier.from_settings(self.settings, audience=self.spiffe_id)
        self.servicer = AgentServicer(self.runner, build_card(agent, endpoint="", spiffe_id=self.spiffe_id))
        self.server = MeshServer(
            name=agent.card.name,
            settings=self.settings,
            port=self.settings.agent_port if port is None else port,
            services=[bind(self.servicer, agent_pb2_grpc.add_AgentServiceServicer_to_server, AGENT_SERVICE)],
            readiness=self._check_ready,
            kind="agent",
            identity=self.identity_name,
        )
        # A token signed by a revoked certificate or identity is refused like a revoked caller.
        self.runner.verifier.revocations = self.server.revocations
        self.registration: Registration | None = None
        if register:
            self.registration = Registration(
                card=lambda: self.card,
                settings=self.settings,
                registry_address=registry_address or self.settings.registry_address,
                state=self._serving_state,
                load=lambda: self.runner.load,
            )
        self._ready = False
        self._started = False
        self._stopped = False

    @property
    def card(self) -> agent_pb2.AgentCard:
        """The card this instance serves and registers (endpoint filled once started)."""
        return self.servicer.card

    @property
    def port(self) -> int:
        """The port the server listens on (0 before start)."""
        return self.server.port

    @property
    def address(self) -> str:
        """host:port callers use to reach this instance."""
        return self.card.endpoint

    async def start(self) -> None:
        """Start the agent, serve it, and begin registering (in the background; see ``wait_registered``)."""
        await self.agent.startup()
        self._started = True
        with contextlib.suppress(Exception):
            await self._check_ready()  # so the first heartbeat already tells the truth
        await self.server.start()
        endpoint = f"{_advertised_host(self.settings)}:{self.server.port}"
        self.servicer.card = build_card(self.agent, endpoint=endpoint, spiffe_id=self.spiffe_id)
        if self.registration is not None:
            self.registration.start()
        logger.info("agent %s/%s %s serving at %s", self.card.namespace, self.card.name, self.card.version, endpoint)

    async def wait_registered(self) -> None:
        """Wait until the registry granted a lease (bound it with ``asyncio.timeout``)."""
        if self.registration is None:
            raise RuntimeError("this runtime was created with register=False")
        await self.registration.wait_registered()

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: refuse new calls, report DRAINING, finish in-flight calls, deregister, stop."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        self.runner.start_draining()
        self._ready = False
        await self.server.drain()
        if self.registration is not None:
            await self.registration.drain()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.runner.wait_idle()
        except TimeoutError:
            logger.warning("%d call(s) still in flight after %.1fs; stopping anyway", self.runner.in_flight, grace)
        if self.registration is not None:
            await self.registration.stop()
        await self.server.stop(grace=max(0.0, deadline - time.monotonic()))
        await self.agent.shutdown()

    async def serve_until_signalled(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
            logger.info("agent %s: stop requested, draining", self.card.name)
        finally:
            await self.stop()

    async def __aenter__(self) -> AgentRuntime:
        try:
            await self.start()
        except BaseException:
            await self.stop(grace=0)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _check_ready(self) -> bool:
        try:
            self._ready = not self.runner.draining and await self.agent.ready()
        except Exception:  # a failing check means not ready; the server logs it
            self._ready = False
            raise
        return self._ready

    def _serving_state(self) -> int:
        if self.runner.draining:
            return agent_pb2.SERVING_STATE_DRAINING
        return agent_pb2.SERVING_STATE_SERVING if self._ready else agent_pb2.SERVING_STATE_NOT_SERVING


def run_agent(
    agent: Agent,
    *,
    settings: Settings | None = None,
    port: int | None = None,
    registry_address: str | None = None,
    register: bool = True,
) -> None:
    """Serve ``agent`` in this process until SIGTERM/SIGINT (blocking), registered unless ``register=False``.

    Sets the process up first: logging, tracing, the Prometheus endpoint (``metrics_port``) and uvloop.
    """
    runtime = AgentRuntime(agent, settings=settings, port=port, registry_address=registry_address, register=register)
    telemetry.configure_logging(runtime.settings)
    telemetry.configure_tracing(runtime.settings, f"agent-{agent.card.name}")
    telemetry.start_metrics_server(runtime.settings)
    telemetry.run(runtime.serve_until_signalled())


def _advertised_host(settings: Settings) -> str:
    if settings.advertise_host:
        return settings.advertise_host
    host = socket.gethostname() if settings.bind_host in _WILDCARD_HOSTS else settings.bind_host
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
