"""A whole mesh on one machine, as child processes: what ``agentmesh up`` and ``make demo`` run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rich.console import Console

from agentmesh._settings import Settings

console = Console(stderr=True)

_SERVICES = ("registry", "planner", "gateway")
_OPS = ("client", "ops")
# The planner identity is also the one allowed to invoke agents (the demo runs steps with it).
_PLANNER = ("service", "planner")


def agent_identity(module: str) -> str:
    """Agent folder names use underscores; identities and card names are DNS-like."""
    return module.replace("_", "-")


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 15) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)


@dataclass
class LocalMesh:
    """Starts, watches and stops the mesh's processes; ``run`` is the whole ``agentmesh up``."""

    agents: list[str]
    startup_timeout: float = 180.0
    settings: Settings = field(default_factory=Settings.from_env)
    _children: list[_Child] = field(default_factory=list)

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
            console.print("serving; Ctrl-C stops the mesh")
            await self._watch(stop)
            return 0
        except MeshError as exc:
            console.print(f"[red]agentmesh up failed:[/] {exc.message}")
            return 1
        finally:
            await self.stop()

    async def _start(self, stop: asyncio.Event) -> str:
        with console.status("preparing certificates") as status:
            await asyncio.to_thread(self._ensure_certificates)
            status.update("migrating the database")
            from agentmesh.storage import upgrade

            await asyncio.to_thread(upgrade, self.settings.resolved_database_url)
            triton_url = self.settings.triton_url
            if not triton_url:
                status.update("starting Triton (first start exports MiniLM to ONNX; later starts take seconds)")
                from agentmesh.inference import free_port

                port = free_port()
                self._spawn("triton", ["triton", "--port", str(port)])
                triton_url = f"127.0.0.1:{port}"
                await self._wait_triton(triton_url)
            os.environ["AGENTMESH_TRITON_URL"] = triton_url
            self.settings = self.settings.replace(triton_url=triton_url)
            for service in _SERVICES:
                status.update(f"starting the {service}")
                port = getattr(self.settings, f"{service}_port")
                self._spawn(service, [service, "--port", str(port)])
            for service in _SERVICES:
                status.update(f"waiting for the {service} to report SERVING")
                await self._wait_serving(service, f"127.0.0.1:{getattr(self.settings, f'{service}_port')}")
            for module in self.agents:
                status.update(f"starting agent {module}")
                self._spawn(f"agent-{module}", ["agent", "run", module, "--port", "0"])
            status.update(f"waiting for {len(self.agents)} agents to register")
            await self._wait_registered()
        return triton_url

    def _ensure_certificates(self) -> None:
        from agentmesh.security import CertificateAuthority

        authority = CertificateAuthority.load_or_init(self.settings.home, self.settings.trust_domain)
        workloads = [("service", s) for s in _SERVICES] + [_OPS]
        workloads += [("agent", agent_identity(m)) for m in self.agents]
        for kind, name in workloads:
            authority.ensure(kind, name)

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        log = log_path.open("ab")
        env = {
            **os.environ,
            "AGENTMESH_HOME": str(self.settings.home.resolve()),
            "AGENTMESH_REGISTRY_ADDRESS": f"127.0.0.1:{self.settings.registry_port}",
            "AGENTMESH_PLANNER_ADDRESS": f"127.0.0.1:{self.settings.planner_port}",
        }
        process = subprocess.Popen(  # the CLI of this same interpreter, one process per workload
            [sys.executable, "-m", "agentmesh.cli", *argv], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        self._children.append(_Child(name, process, log_path, log))

    def _check_alive(self) -> None:
        from agentmesh._errors import UnavailableError

        for child in self._children:
            if child.process.poll() is not None:
                raise UnavailableError(
                    f"{child.name} exited with code {child.process.returncode}; last lines of "
                    f"{child.log_path}:\n{child.tail()}"
                )

    async def _poll(self, what: str, ready: object) -> None:
        from agentmesh._errors import DeadlineExceededError

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if await ready():  # type: ignore[operator]
                return
            await asyncio.sleep(0.1)
        raise DeadlineExceededError(f"{what} not ready within {self.startup_timeout:.0f}s; logs in {self.logs}")

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

    def ops_channel(self, address: str) -> object:
        from agentmesh._channel import create_channel

        return create_channel(address, self.settings, kind=_OPS[0], name=_OPS[1])

    async def _wait_serving(self, service: str, address: str) -> None:
        from agentmesh._health import check_health

        channel = self.ops_channel(address)

        async def ready() -> bool:
            return await check_health(channel) == "SERVING"  # type: ignore[arg-type]

        try:
            await self._poll(service, ready)
        finally:
            await channel.close()  # type: ignore[attr-defined]

    async def _wait_registered(self) -> None:
        from agentmesh.v1 import registry_pb2, registry_pb2_grpc

        channel = self.ops_channel(self.settings.registry_address)
        registry = registry_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[arg-type]
        wanted = {agent_identity(m) for m in self.agents}

        async def ready() -> bool:
            reply = await registry.ListAgents(registry_pb2.ListAgentsRequest(page_size=1000), timeout=2.0)
            return wanted <= {i.card.name for i in reply.instances}

        try:
            await self._poll("agent registration", ready)
        finally:
            await channel.close()  # type: ignore[attr-defined]

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._check_alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every child (agents first, Triton last) and wait for them; kill what does not exit."""
        children, self._children = list(reversed(self._children)), []
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + grace
        for child in children:
            try:
                await asyncio.to_thread(child.process.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                await asyncio.to_thread(child.process.wait)
            child.log.close()

