"""A whole mesh on one machine, as child processes: what ``agentmesh up`` and ``make demo`` run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from agentmesh._settings import Settings

if TYPE_CHECKING:  # grpc loads only when a channel is opened
    import grpc

console = Console(stderr=True)

_SERVICES = ("registry", "planner", "gateway")
_OPS = ("client", "ops")
# The planner identity is also the one allowed to invoke agents (the demo runs steps with it).
_PLANNER = ("service", "planner")


def agent_identity(module: str) -> str:
    """The identity name of a shipped agent: its card's ``namespace/name`` (what its certificate carries)."""
    from agentmesh.cli._agent import resolve_agent_class

    card = resolve_agent_class(module).card
    return f"{card.namespace}/{card.name}"


@dataclass
class _Child:
    """One supervised process: restarted with backoff when it exits, until the mesh stops."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    restarts: int = 0  # consecutive quick exits (reset once a run lasted _STABLE_RUN seconds)
    started_at: float = 0.0
    restart_at: float | None = None  # when an exited child is due to start again

    def spawn(self) -> None:
        if self.log is None:
            self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # the CLI of this same interpreter, one process per workload
            [sys.executable, "-m", "agentmesh.cli", *self.argv], stdout=self.log, stderr=subprocess.STDOUT, env=self.env
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    def tail(self, lines: int = 15) -> str:
        if self.log is not None:
            self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)


# Restart backoff: 0.5 s doubling up to 30 s; a run of 60 s counts as healthy and resets it.
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_STABLE_RUN = 60.0
_SUPERVISE_INTERVAL = 0.2


def _say(level: str, message: str) -> None:
    """A supervisor line on stderr: ``WARNING``/``INFO`` and the child's name, so it greps like a log."""
    colour = {"WARNING": "yellow", "ERROR": "red"}.get(level, "green")
    console.print(f"[{colour}]{level}[/] {message}", highlight=False, soft_wrap=True)


@dataclass
class LocalMesh:
    """Starts, supervises and stops the mesh's processes; ``run`` is the whole ``agentmesh up``.

    Every child (Triton, each service in ``services``, each agent) is restarted with backoff when it exits,
    on the same ports, and the mesh stops only on Ctrl-C/SIGTERM. Another service joins the mesh by adding
    its name to ``services`` (it is started as ``agentmesh <name> --port <AGENTMESH_<NAME>_PORT>``).
    """

    agents: list[str]
    startup_timeout: float = 180.0
    settings: Settings = field(default_factory=Settings.from_env)
    services: tuple[str, ...] = _SERVICES
    _children: list[_Child] = field(default_factory=list)
    _stopping: bool = False
    _console_free: bool = True

    @property
    def logs(self) -> Path:
        return self.settings.home / "logs"

    async def run(self, *, demo: bool, ticket_id: str | None) -> int:
        from agentmesh._errors import MeshError

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        try:
            triton_url = await self._start(stop)
            console.print(
                f"[green]mesh ready[/] in {time.monotonic() - started:.1f}s — registry "
                f"{self.settings.registry_address}, planner {self.settings.planner_address}, gateway "
                f"127.0.0.1:{self.settings.gateway_port}, Triton {triton_url}; logs in {self.logs}"
            )
            if demo:
                from agentmesh.cli._demo import run_demo

                return await run_demo(self.settings, ticket_id=ticket_id, console=console)
            from agentmesh.cli._token import how_to_call

            if self.settings.console_port >= 0 and self._console_free:
                console.print(f"console: https://127.0.0.1:{self.settings.console_port}/ (paste a dev token)")
            # soft_wrap: the commands stay one line each, ready to copy.
            console.print(
                "call it through the gateway (TLS + a dev bearer token):\n" + escape(how_to_call(self.settings)),
                soft_wrap=True,
            )
            console.print("serving; crashed processes are restarted; Ctrl-C stops the mesh")
            await self._watch(stop)
            return 0
        except MeshError as exc:
            console.print(f"[red]agentmesh up failed:[/] {escape(exc.message)}", soft_wrap=True)  # one line
            return 1
        finally:
            await self.stop()

    async def _start(self, stop: asyncio.Event) -> str:
        # The children listen on AGENTMESH_<SERVICE>_PORT; clients (ours and theirs) dial exactly those.
        self.settings = self.settings.replace(
            registry_address=f"127.0.0.1:{self.settings.registry_port}",
            planner_address=f"127.0.0.1:{self.settings.planner_port}",
        )
        self._check_ports()
        with console.status("preparing certificates") as status:
            await asyncio.to_thread(self._ensure_certificates)
            status.update("migrating the database")
            from agentmesh.storage import upgrade

            await asyncio.to_thread(upgrade, self.settings.resolved_database_url)
            triton_url = self.settings.triton_url
            # Everything starts at once: most of a cold start is each process importing its libraries (and
            # Triton's first start exporting MiniLM), which overlap. Services wait for the database only;
            # agents retry their registration and prepare their Triton models once Triton answers.
            local_triton = not triton_url
            if local_triton:
                # The configured port (AGENTMESH_TRITON_PORT): a restarted Triton comes back where agents look.
                self._spawn("triton", ["triton", "--port", str(self.settings.triton_port)])
                triton_url = f"127.0.0.1:{self.settings.triton_port}"
            os.environ["AGENTMESH_TRITON_URL"] = triton_url
            self.settings = self.settings.replace(triton_url=triton_url)
            for service in self.services:
                port = getattr(self.settings, f"{service}_port")
                self._spawn(service, [service, "--port", str(port)])
            for index, module in enumerate(self.agents):
                port = self.settings.agent_port + index if self.settings.agent_port else 0
                self._spawn(f"agent-{module}", ["agent", "run", module, "--port", str(port)])
            if local_triton:
                status.update("starting Triton (first start exports MiniLM to ONNX; later starts take seconds)")
                await self._wait_triton(triton_url)
            for service in self.services:
                status.update(f"waiting for the {service} to report SERVING")
                await self._wait_serving(service, f"127.0.0.1:{getattr(self.settings, f'{service}_port')}")
            status.update(f"waiting for {len(self.agents)} agents to register")
            await self._wait_registered()
        return triton_url

    def _check_ports(self) -> None:
        """Refuse to start when a port of the mesh is taken: the other listener (often a mesh already up) would
        answer the readiness checks, and this mesh would report ready while its own processes fail to bind."""
        import socket

        from agentmesh._errors import FailedPreconditionError

        wanted = [(service, getattr(self.settings, f"{service}_port")) for service in self.services]
        if not self.settings.triton_url:
            wanted.append(("triton", self.settings.triton_port))
        def taken(port: int) -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed one's TIME_WAIT is no owner
                try:
                    probe.bind((self.settings.bind_host, port))
                except OSError:
                    return True
            return False

        busy = [f"{port} ({name}, AGENTMESH_{name.upper()}_PORT)" for name, port in wanted if taken(port)]
        # The console is an aid: the gateway serves without it, but the console URL printed would be another's.
        if self.settings.console_port >= 0 and not busy and taken(self.settings.console_port):
            self._console_free = False
            _say(
                "WARNING",
                f"the console's port {self.settings.console_port} is in use: the mesh starts without its console "
                "(AGENTMESH_CONSOLE_PORT chooses another)",
            )
        if busy:
            ports, are = ("ports", "are") if len(busy) > 1 else ("port", "is")
            raise FailedPreconditionError(
                f"{ports} {', '.join(busy)} on {self.settings.bind_host} {are} already in use: is a mesh already up? "
                "Stop it (Ctrl-C where it runs), or choose other ports"
            )

    def _ensure_certificates(self) -> None:
        from agentmesh.audit import PSEUDONYM_KEY_NAME, ensure_pseudonym_key
        from agentmesh.security import CertificateAuthority

        # The mesh's pseudonym secret: the gateway redacts emails to keyed pseudonyms the CRM agent can match.
        if not self.settings.pseudonym_key_file:
            ensure_pseudonym_key(self.settings.home / PSEUDONYM_KEY_NAME)

        authority = CertificateAuthority.load_or_init(self.settings.home, self.settings.trust_domain)
        workloads = [("service", s) for s in self.services] + [_OPS]
        workloads += [("agent", agent_identity(m)) for m in self.agents]
        for kind, name in workloads:
            authority.ensure(kind, name)

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "AGENTMESH_HOME": str(self.settings.home.resolve()),
            "AGENTMESH_REGISTRY_ADDRESS": self.settings.registry_address,
            "AGENTMESH_PLANNER_ADDRESS": self.settings.planner_address,
        }
        if self.settings.metrics_port:  # one /metrics port per child, counting up from AGENTMESH_METRICS_PORT
            env["AGENTMESH_METRICS_PORT"] = str(self.settings.metrics_port + len(self._children))
        child = _Child(name, argv, self.logs / f"{name}.log", env)
        child.spawn()
        self._children.append(child)

    def _supervise(self) -> None:
        """Restart exited children with backoff (a crash is said at WARNING, the restart at INFO)."""
        now = time.monotonic()
        for child in self._children:
            if self._stopping or child.process is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.spawn()
                    _say("INFO", f"{child.name} restarted (pid {child.process.pid}, restart {child.restarts})")
                continue
            code = child.process.poll()
            if code is None:
                continue
            if now - child.started_at >= _STABLE_RUN:
                child.restarts = 0
            wait = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2**child.restarts)
            child.restarts += 1
            child.restart_at = now + wait
            _say(
                "WARNING",
                f"{child.name} exited with code {code}; restarting in {wait:.1f}s (last lines of {child.log_path}:\n"
                f"{child.tail(5)})",
            )

    async def _poll(self, what: str, ready: Callable[[], Awaitable[bool]]) -> None:
        from agentmesh._errors import DeadlineExceededError

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self._supervise()
            if await ready():
                return
            await asyncio.sleep(0.1)
        crashed = [child for child in self._children if child.restarts]
        detail = "".join(f"\n{c.name} exited {c.restarts} times; last lines:\n{c.tail()}" for c in crashed)
        raise DeadlineExceededError(
            f"{what} not ready within {self.startup_timeout:.0f}s; logs in {self.logs}{detail}"
        )

    async def _wait_triton(self, url: str) -> None:
        import tritonclient.grpc.aio as triton

        client = triton.InferenceServerClient(url)

        async def ready() -> bool:
            try:
                return bool(await client.is_server_ready())
            except Exception:  # not listening yet
                return False

        try:
            await self._poll("Triton", ready)
        finally:
            await client.close()

    def ops_channel(self, address: str, server_identity: str = "") -> grpc.aio.Channel:
        from agentmesh._channel import create_channel

        return create_channel(address, self.settings, kind=_OPS[0], name=_OPS[1], server_identity=server_identity)

    async def _wait_serving(self, service: str, address: str) -> None:
        from agentmesh._health import check_health

        channel = self.ops_channel(address)

        async def ready() -> bool:
            return await check_health(channel) == "SERVING"

        try:
            await self._poll(service, ready)
        finally:
            await channel.close(None)

    async def _wait_registered(self) -> None:
        from agentmesh.cli._agent import resolve_agent_class
        from agentmesh.v1 import registry_pb2, registry_pb2_grpc

        channel = self.ops_channel(self.settings.registry_address)
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        wanted = {resolve_agent_class(m).card.name for m in self.agents}

        async def ready() -> bool:
            reply = await registry.ListAgents(registry_pb2.ListAgentsRequest(page_size=1000), timeout=2.0)
            return wanted <= {i.card.name for i in reply.instances}

        try:
            await self._poll("agent registration", ready)
        finally:
            await channel.close(None)

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._supervise()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=_SUPERVISE_INTERVAL)

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every child (agents first, Triton last) and wait for them; kill what does not exit."""
        self._stopping = True
        children, self._children = list(reversed(self._children)), []
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + grace
        for child in children:
            if child.process is not None:
                try:
                    await asyncio.to_thread(child.process.wait, max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    await asyncio.to_thread(child.process.wait)
            if child.log is not None:
                child.log.close()
