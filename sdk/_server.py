"""One way to build a mesh server: mTLS, identity, authorization, telemetry, errors, health, reflection.

Every service and agent calls :class:`MeshServer`; nothing else creates a ``grpc.aio.server``. The single
interceptor (:class:`_MeshInterceptor`) does all per-call work in one wrapper because each aio interceptor
layer costs a measurable share of a unary call (bench/RESULTS.md).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentmesh import security, telemetry
from agentmesh._errors import (
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    MeshError,
    UnavailableError,
    UnimplementedError,
)
from agentmesh._settings import Settings

if TYPE_CHECKING:
    from agentmesh.security import ServerSecurity
    from agentmesh.telemetry import CallObservation, ServerTelemetry

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]

# Mesh channels send keepalive pings every 30 s (agentmesh._channel); gRPC servers by default accept one ping
# per 5 minutes without data and answer more with GOAWAY "too_many_pings", which breaks long streams
# (heartbeats, watches, the revocation feed). Accept pings every 20 s, with or without calls in flight. The
# name is gRPC core's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS; an unknown name is silently ignored.
_KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    # gRPC sets SO_REUSEPORT by default: a second server on a port in use (a second `agentmesh up`, a replica
    # started twice) then binds it too and the kernel splits connections between the two. Refuse instead.
    ("grpc.so_reuseport", 0),
]

_PORT_SETTINGS = frozenset({"registry", "planner", "gateway"})  # servers whose port has its own setting


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and the generated function that adds it to a server."""

    full_name: str  # e.g. "agentmesh.v1.RegistryService"
    add_to_server: Callable[[grpc.aio.Server], None]


def bind(servicer: object, add_fn: Callable[[Any, grpc.aio.Server], None], full_name: str) -> ServiceBinding:
    """Pair a servicer with its generated ``add_XServicer_to_server`` function."""
    return ServiceBinding(full_name=full_name, add_to_server=lambda server: add_fn(servicer, server))


class Serving(abc.ABC):
    """Start/stop lifecycle shared by everything that serves: ``async with`` and run-until-SIGTERM."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start serving."""

    @abc.abstractmethod
    async def stop(self, grace: float | None = None) -> None:
        """Stop, letting in-flight work finish within ``grace`` seconds."""

    async def serve_until_signalled(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop gracefully."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(grace=1.0)


class MeshServer(Serving):
    """A ``grpc.aio`` server with the mesh's security, telemetry, health, reflection and graceful stop."""

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        port: int,
        services: Sequence[ServiceBinding],
        readiness: ReadinessCheck | None = None,
        kind: str = "service",
        public: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        identity: str | None = None,
        revocations: security.RevocationSet | None = None,
    ) -> None:
        """``identity`` is the workload name of the server's certificate (default ``name``; an agent's is
        ``namespace/name``). ``revocations``: a set the caller keeps current (the registry's own); without it
        the server follows the registry's set itself (a :class:`~agentmesh.security.RevocationFollower`).
        """
        self.name = name
        self.kind = kind
        self.identity = identity or name
        self.settings = settings
        self.revocations = revocations if revocations is not None else security.RevocationSet()
        self.revocation_follower: security.RevocationFollower | None = None
        if revocations is None and settings.registry_address and not settings.insecure_dev:
            self.revocation_follower = security.RevocationFollower(
                settings, self.revocations, kind=kind, name=self.identity
            )
        self._requested_port = port
        self._services = list(services)
        self._readiness = readiness
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # no stubs for health.aio
        self._server: grpc.aio.Server | None = None
        self._readiness_task: asyncio.Task[None] | None = None
        self._stopping = False
        # A public port (the gateway's): TLS without client certificates; the service authenticates callers
        # itself (OAuth2 bearer tokens), so the identity check lets certificate-less calls through.
        self._public = public
        self._options = list(options)
        self.port = 0

    @property
    def address(self) -> str:
        """host:port the server listens on."""
        return f"{self.settings.bind_host}:{self.port}"

    async def start(self) -> None:
        """Bind, start serving, and report NOT_SERVING until the readiness check passes."""
        interceptor = _MeshInterceptor(
            security=security.server_security(
                self.settings,
                self.kind,
                self.identity,
                revocations=self.revocations,
                allow_anonymous=self._public,
            ),
            telemetry=telemetry.server_telemetry(self.settings, self.name),
        )
        server = grpc.aio.server(interceptors=[interceptor], options=[*_KEEPALIVE_OPTIONS, *self._options])
        for service in self._services:
            service.add_to_server(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [s.full_name for s in self._services]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        target = f"{self.settings.bind_host}:{self._requested_port}"
        try:
            self.port = security.add_port(
                server, target, self.settings, self.kind, self.identity, require_client_auth=not self._public
            )
        except RuntimeError:  # grpc's "Failed to bind to address ...": in use, or not an address of this host
            setting = f"AGENTMESH_{self.name.upper()}_PORT" if self.name in _PORT_SETTINGS else "--port"
            raise FailedPreconditionError(
                f"the {self.name} cannot listen on {target}: the port is in use (another {self.name}, or another "
                f"mesh?) or the address is not this host's; stop the other or choose another port "
                f"({setting})",
                reason="PORT_IN_USE",
            ) from None
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.revocation_follower is not None:
            await self.revocation_follower.start()  # the saved set is in force before the first call
        await server.start()
        self._server = server
        self._readiness_task = asyncio.create_task(self._watch_readiness(), name=f"{self.name}-readiness")
        logger.info("%s serving on %s", self.name, self.address)

    async def _set_health(self, status: int) -> None:
        for service in ("", *(s.full_name for s in self._services)):
            await self._health.set(service, status)

    async def _watch_readiness(self) -> None:
        # Dependencies come and go (a database restart); health follows them both ways.
        serving: bool | None = None
        while not self._stopping:
            try:
                ready = True if self._readiness is None else await self._readiness()
            except Exception:  # a failing check means not ready, never a crashed server
                # Once per outage (the transition below), not at every poll.
                logger.log(logging.WARNING if serving is not False else logging.DEBUG,
                           "%s readiness check failed", self.name, exc_info=True)
                ready = False
            if ready != serving:
                # Losing readiness after serving is a dependency going away: WARNING; the rest is news.
                level = logging.WARNING if serving and not ready else logging.INFO
                serving = ready
                status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
                await self._set_health(status)
                logger.log(level, "%s is %s", self.name, "SERVING" if ready else "NOT_SERVING")
            await asyncio.sleep(self.settings.readiness_interval)

    async def drain(self) -> None:
        """Report NOT_SERVING at once and for good (load balancers stop sending), still serving calls."""
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task
            self._readiness_task = None
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls and let in-flight calls finish within ``grace`` seconds."""
        if self._server is None or self._stopping:
            return
        self._stopping = True
        await self.drain()
        await self._server.stop(self.settings.shutdown_grace if grace is None else grace)
        if self.revocation_follower is not None:
            await self.revocation_follower.stop()
        logger.info("%s stopped", self.name)



if TYPE_CHECKING:  # generic in grpc-stubs only, not at run time
    _ServerInterceptor = grpc.aio.ServerInterceptor[bytes | Message, Message]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class _MeshInterceptor(_ServerInterceptor):
    """Identity, authorization, telemetry and error mapping, in one wrapper per call.

    Every method passes through it, so its handlers take any request message (or the raw bytes of one: unary
    and server-streaming requests are parsed inside the wrapper) and answer any response message.
    """

    def __init__(self, *, security: ServerSecurity, telemetry: ServerTelemetry) -> None:
        self._security = security
        self._telemetry = telemetry

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[bytes | Message, Message]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[bytes | Message, Message]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary:
            # Requests are parsed inside the wrapper, after the identity check, so bad bytes get INVALID_ARGUMENT.
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            # Server reflection is bidi streaming: it gets the same identity check as every other call.
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_bidi(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: none in the contract

    def _wrap_unary(
        self, behavior: Callable[..., Any], method: str, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[..., Awaitable[Any]]:
        async def unary(raw: bytes, context: grpc.aio.ServicerContext[bytes, Message]) -> Any:
            observation = self._telemetry.start(method, context)
            try:
                self._security.check(method, context)
                response = await behavior(_parse_request(deserializer, raw, method), context)
            except BaseException as exc:
                await self._fail(exc, method, context, observation)
                raise
            observation.end(grpc.StatusCode.OK)
            return response

        return unary

    def _wrap_stream(
        self, behavior: Callable[..., Any], method: str, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[..., Any]:
        async def stream(raw: bytes, context: grpc.aio.ServicerContext[bytes, Message]) -> Any:
            observation = self._telemetry.start(method, context)
            try:
                self._security.check(method, context)
                async for response in behavior(_parse_request(deserializer, raw, method), context):
                    yield response
            except BaseException as exc:
                await self._fail(exc, method, context, observation)
                raise
            observation.end(grpc.StatusCode.OK)

        async def written(raw: bytes, context: grpc.aio.ServicerContext[bytes, Message]) -> None:
            observation = self._telemetry.start(method, context)
            try:
                self._security.check(method, context)
                await behavior(_parse_request(deserializer, raw, method), context)
            except BaseException as exc:
                await self._fail(exc, method, context, observation)
                raise
            observation.end(grpc.StatusCode.OK)

        # A handler either yields its responses or sends them with ``context.write`` (grpc's own health Watch
        # does): the wrapper must be of the same kind, or grpc cannot run it.
        return stream if inspect.isasyncgenfunction(behavior) else written

    def _wrap_bidi(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def bidi(requests: Any, context: grpc.aio.ServicerContext[Message, Message]) -> Any:
            observation = self._telemetry.start(method, context)
            try:
                self._security.check(method, context)
                async for response in behavior(requests, context):
                    yield response
            except BaseException as exc:
                await self._fail(exc, method, context, observation)
                raise
            observation.end(grpc.StatusCode.OK)

        return bidi

    async def _fail(
        self, exc: BaseException, method: str, context: grpc.aio.ServicerContext[Any, Message], observation: CallObservation
    ) -> None:
        """Record the failure and, for mesh errors and bugs, abort with a precise status (never a traceback)."""
        if isinstance(exc, GeneratorExit):  # the client cancelled a response stream: nothing left to answer
            observation.end(grpc.StatusCode.CANCELLED, detach=False)
            return
        if isinstance(exc, grpc.aio.AbortError) or isinstance(exc, asyncio.CancelledError):
            observation.end(context.code() or grpc.StatusCode.CANCELLED)
            return
        error: MeshError
        if isinstance(exc, MeshError):
            error = exc
        elif isinstance(exc, NotImplementedError):
            # Generated base servicers raise it for RPCs a server does not serve (yet).
            error = UnimplementedError(f"{method} is not served by this server yet")
        elif _lost_database(exc):
            # A handler without its own mapping met a database that is down or restarting: the caller may retry
            # (the readiness check reports NOT_SERVING meanwhile). The log has the driver's error; the caller
            # gets no database host or port.
            logger.warning("%s: the database cannot be reached: %s", method, _first_line(exc))
            service = method.lstrip("/").partition("/")[0].rpartition(".")[2] or "this service"
            error = UnavailableError(f"{service} cannot reach its database right now; retry in a few seconds")
        else:
            logger.exception("unhandled error in %s", method)
            error = InternalError(f"internal error in {method}; see the server log")
        observation.end(error.code, error)
        await context.abort_with_status(error.to_status())  # type: ignore[attr-defined]  # grpc-stubs lag aio


def _lost_database(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLAlchemy's word that the database connection failed or was lost (not a bad query)."""
    if "sqlalchemy.exc" not in sys.modules:  # only a server that uses SQLAlchemy can raise its errors
        return False
    from agentmesh.storage import connection_lost

    return connection_lost(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _parse_request(deserializer: Callable[[bytes], Any] | None, raw: bytes, method: str) -> Any:
    """The request message; bytes that do not parse are the caller's error (INVALID_ARGUMENT), not ours."""
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except Exception as exc:  # protobuf raises DecodeError; any parse failure is a malformed request
        raise InvalidArgumentError(f"the request to {method} is not a valid message: {exc}") from None

