"""Builds the registry server: ``RegistryService`` on a MeshServer, ready once its index is loaded."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentmesh._server import MeshServer, Serving, bind
from agentmesh._settings import Settings
from agentmesh.services.registry.registry import Registry
from agentmesh.services.registry.servicer import RegistryServicer
from agentmesh.services.registry.store import RegistryStore
from agentmesh.services.registry.text import kernels
from agentmesh.services.registry.visibility import warm_scanner
from agentmesh.v1 import registry_pb2_grpc

__all__ = ["SERVICE_NAME", "RegistryServer", "build_server", "serve"]

SERVICE_NAME = "registry"
logger = logging.getLogger(__name__)


class RegistryServer(Serving):
    """A registry replica: the domain (:attr:`registry`) and its gRPC server (:attr:`server`)."""

    def __init__(
        self, settings: Settings, *, port: int | None = None, database_url: str | None = None
    ) -> None:
        from agentmesh.storage import create_async_engine

        self.settings = settings
        self.engine = create_async_engine(database_url or settings.resolved_database_url)
        self.registry = Registry(RegistryStore(self.engine), settings)
        self.servicer = RegistryServicer(self.registry)
        self.server = MeshServer(
            name=SERVICE_NAME,
            settings=settings,
            port=settings.registry_port if port is None else port,
            readiness=self._ready,
            revocations=self.registry.revocations,  # the registry checks calls against its own set
            services=[
                bind(
                    self.servicer,
                    registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                    "agentmesh.v1.RegistryService",
                )
            ],
        )
        self._loader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """host:port the server listens on."""
        return self.server.address

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    async def _ready(self) -> bool:
        from agentmesh.storage import ping

        return await self.registry.ready() and await ping(self.engine)

    async def _load(self) -> None:
        # The database may come up after the registry; keep trying, health says NOT_SERVING meanwhile.
        while True:
            try:
                await self.registry.start()
                return
            except Exception:
                logger.warning("registry cannot load from its database yet; retrying", exc_info=True)
                await asyncio.sleep(self.settings.readiness_interval)

    async def start(self) -> None:
        """Serve at once (NOT_SERVING), load the registry in the background, then report SERVING."""
        # The process's one-time costs first, before listening: numba's import and kernels, the RE2 scanner. Paid
        # beside the load (on its worker thread), parts of them hold the GIL for 100s of ms: the loop stalls.
        kernels().warm()
        warm_scanner()
        await self.server.start()
        self._loader = asyncio.create_task(self._load(), name="registry-load")

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving, stop the registry loops, flush leases, close the database."""
        self.servicer.end_streams()  # agents' heartbeat streams would otherwise hold the stop for the whole grace
        await self.server.stop(grace)
        if self._loader is not None:
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        await self.registry.stop()
        await self.engine.dispose()



def build_server(
    settings: Settings, *, port: int | None = None, database_url: str | None = None
) -> RegistryServer:
    """A registry replica on ``port`` (default: settings.registry_port) over ``database_url`` (default: settings)."""
    return RegistryServer(settings, port=port, database_url=database_url)


async def serve(settings: Settings, *, port: int | None = None) -> None:
    """Run a registry replica until SIGTERM or SIGINT, then stop gracefully."""
    await build_server(settings, port=port).serve_until_signalled()
