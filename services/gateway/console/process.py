"""The gateway process with its console: ``agentmesh gateway`` serves both (console_port -1: the gateway alone).

The console listens with the gateway's own certificate (HTTPS; plaintext only under --insecure-dev) and
reaches the mesh only through the gateway's public port on loopback.
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from agentmesh._server import MeshServer, Serving
from agentmesh._settings import Settings
from agentmesh.services.gateway.console._app import build_app
from agentmesh.services.gateway.console._upstream import GatewayClient

__all__ = ["ConsoleServer", "GatewayWithConsole", "build_server"]

logger = logging.getLogger(__name__)
_ANY_HOST = {"0.0.0.0", "::", ""}


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.insecure_dev:
        return None
    from agentmesh.security import credential_paths

    files = credential_paths(settings, "service", "gateway")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = settings.gateway_tls_cert_file or str(files.cert)
    key = settings.gateway_tls_key_file or str(files.key)
    context.load_cert_chain(cert, key)
    return context


class ConsoleServer(Serving):
    """The console's HTTP(S) listener in front of a gateway at ``gateway_address`` (may be a callable)."""

    def __init__(self, settings: Settings, client: GatewayClient, *, port: int | None = None) -> None:
        self.settings = settings
        self.client = client
        self.requested_port = settings.console_port if port is None else port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @classmethod
    def for_gateway(cls, settings: Settings, gateway: MeshServer, *, port: int | None = None) -> ConsoleServer:
        """A console calling ``gateway``'s public port on loopback (its port is read once it has started)."""

        def address() -> str:
            host = "127.0.0.1" if gateway.settings.bind_host in _ANY_HOST else gateway.settings.bind_host
            return f"{host}:{gateway.port}"

        ca = None if settings.insecure_dev else settings.home / "ca" / "ca.pem"
        if settings.ca_file and not settings.insecure_dev:
            from pathlib import Path

            ca = Path(settings.ca_file)
        return cls(settings, GatewayClient(address, ca), port=port)

    @property
    def url(self) -> str:
        """Where a browser opens the console."""
        scheme = "http" if self.settings.insecure_dev else "https"
        return f"{scheme}://{self.settings.bind_host}:{self.port}/"

    async def start(self) -> None:
        """Bind and serve."""
        # handler_cancellation: a page that goes away ends its watch at once; shutdown_timeout bounds a stop.
        runner = web.AppRunner(
            build_app(self.client), access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.bind_host, self.requested_port, ssl_context=_tls(self.settings))
        await site.start()
        self._runner = runner
        server = site._server  # the bound socket tells the port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        logger.info("console serving on %s", self.url)

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening and close the gateway channel."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class GatewayWithConsole(Serving):
    """The gateway and its console as one service: the gateway starts first and stops last."""

    def __init__(self, gateway: MeshServer, console: ConsoleServer) -> None:
        self.gateway = gateway
        self.console = console

    async def start(self) -> None:
        """Start the gateway, then the console."""
        await self.gateway.start()
        try:
            await self.console.start()
        except OSError as exc:  # the port is taken: the console is an aid, the gateway serves on without it
            logger.error(
                "console not started on port %s: %s; the gateway serves without it (AGENTMESH_CONSOLE_PORT)",
                self.console.requested_port, exc,
            )
        except BaseException:
            await self.gateway.stop(grace=0.5)
            raise

    async def stop(self, grace: float | None = None) -> None:
        """Stop the console, then drain the gateway."""
        await self.console.stop()
        await self.gateway.stop(grace)


def build_server(settings: Settings, *, port: int | None = None) -> Serving:
    """What ``agentmesh gateway`` runs: the gateway, and the console unless ``console_port`` is -1."""
    from agentmesh.services.gateway.server import build_server as build_gateway

    gateway = build_gateway(settings, port=port)
    if settings.console_port < 0:
        return gateway
    return GatewayWithConsole(gateway, ConsoleServer.for_gateway(settings, gateway))
