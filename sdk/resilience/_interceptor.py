"""The mesh's client-side call policy: deadline, circuit breaker, retries and a CLIENT span per call.

``create_channel`` returns a :class:`MeshChannel`: its unary calls run the policy directly around grpc's own
call, because a ``grpc.aio`` client interceptor costs an extra task and call wrapper per call (about 50k
instructions, a third of the whole policy, measured with callgrind). Server streams, and plain channels
that want the policy, use it as one combined interceptor (:meth:`MeshClientInterceptor.interceptors`).
Tenacity is entered only after a transient failure.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc.aio import AioRpcError, ClientCallDetails, Metadata
from grpc.aio import _channel as _aio_channel
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AnyValue

from agentmesh._grpc_bases import UnaryStreamClientBase, UnaryUnaryClientBase
from agentmesh._settings import Settings
from agentmesh.resilience._breaker import CircuitBreaker, CircuitOpenError, CircuitOpenRpcError, breaker_for
from agentmesh.resilience._deadline import remaining_budget
from agentmesh.resilience._retry import RetryPolicy, is_idempotent_method
from agentmesh.telemetry._tracing import UnsampledChildren, configure_tracing, get_tracer, traceparent_of

_OK = grpc.StatusCode.OK


class _Method:
    """What the interceptor knows about one method, resolved on its first call."""

    __slots__ = ("attributes", "idempotent", "name")

    def __init__(self, method: str, idempotent: bool) -> None:
        service, _, name = method.lstrip("/").partition("/")
        self.name = method
        self.idempotent = idempotent
        self.attributes: dict[str, AnyValue] = {
            "rpc.system": "grpc",
            "rpc.grpc.status_code": 0,
            "rpc.method": name,
            "rpc.service": service,
        }




class MeshClientInterceptor(UnaryUnaryClientBase):
    """Deadline (default, ``with_deadline`` block or inbound budget), breaker, retries, tracing.

    Unary calls get ``default_deadline`` when the caller set none; server streams (watches) are long-lived
    and only get a deadline from an enclosing budget. Retries apply to unary calls only. Pass
    :meth:`interceptors` to a channel: grpc.aio files an interceptor under its first matching arity only.
    """

    def __init__(
        self,
        *,
        tracer: trace.Tracer,
        breaker: CircuitBreaker | None,
        retry: RetryPolicy | None,
        default_deadline: float | None,
        is_idempotent: Callable[[str], bool] = is_idempotent_method,
    ) -> None:
        self._tracer = tracer
        self._unsampled = UnsampledChildren.for_tracer(tracer)
        self._breaker = breaker
        self._retry = retry
        self._default_deadline = default_deadline
        self._is_idempotent = is_idempotent
        self._methods: dict[Any, _Method] = {}

    def interceptors(self) -> list[Any]:  # grpc-stubs has no usable aio ClientInterceptor type
        """This interceptor for unary calls and its server-stream twin, for ``grpc.aio`` channels."""
        return [self, _UnaryStreamInterceptor(self)]

    def _method(self, raw: str | bytes) -> _Method:
        info = self._methods.get(raw)
        if info is None:
            method = raw.decode() if isinstance(raw, bytes) else raw
            info = self._methods[raw] = _Method(method, self._is_idempotent(method))
        return info

    def _start_span(self, info: _Method) -> trace.Span:
        # A child of the current span (the inbound call's, when serving one); non-recording when unsampled.
        if self._unsampled is not None:
            parent = trace.get_current_span().get_span_context()
            if parent.trace_id and not parent.trace_flags.sampled:
                return self._unsampled.child(parent.trace_id, parent.trace_flags, parent.trace_state)
        return self._tracer.start_span(
            info.name,
            kind=SpanKind.CLIENT,
            attributes=info.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def _begin(
        self, method: str | bytes, explicit_timeout: float | None, metadata: Any
    ) -> tuple[_Method, float | None, trace.Span, tuple[tuple[str, Any], ...]]:
        """Resolve the method, the call's timeout, its span and the metadata that carries the trace."""
        info = self._method(method)
        timeout = remaining_budget(self._default_deadline if explicit_timeout is None else explicit_timeout)
        span = self._start_span(info)
        trace_entries = traceparent_of(span.get_span_context())
        return info, timeout, span, (*metadata, *trace_entries) if metadata else tuple(trace_entries)

    async def _run_unary(
        self,
        start: Callable[[float | None], Awaitable[Any]],
        info: _Method,
        call_timeout: float | None,
        span: trace.Span,
    ) -> Any:
        """Await ``start(timeout)`` through the breaker, retrying transient failures within the deadline."""
        deadline = None if call_timeout is None else time.monotonic() + call_timeout
        try:
            result = await self._attempt(start, call_timeout)
        except AioRpcError as first:
            if self._retry is None or not self._retry.is_retryable(first, idempotent=info.idempotent):
                _end_span_error(span, first)
                raise
            try:
                result = await self._retry_after_failure(start, first, info, deadline)
            except BaseException as exc:
                _end_span_error(span, exc)
                raise
        except BaseException as exc:
            _end_span_error(span, exc)
            raise
        span.end()  # rpc.grpc.status_code was set to OK at start, as the stock instrumentation does
        return result

    async def _attempt(
        self, start: Callable[[float | None], Awaitable[Any]], attempt_timeout: float | None
    ) -> Any:
        breaker = self._breaker
        if breaker is not None:
            try:
                breaker.before_call()
            except CircuitOpenError as exc:
                raise CircuitOpenRpcError(exc) from None
        try:
            result = await start(attempt_timeout)
        except BaseException as exc:
            if breaker is not None:
                breaker.record(exc)
            raise
        if breaker is not None:
            breaker.record_success()
        return result

    async def _retry_after_failure(
        self,
        start: Callable[[float | None], Awaitable[Any]],
        first: AioRpcError,
        info: _Method,
        deadline: float | None,
    ) -> Any:
        assert self._retry is not None
        pending: list[BaseException] = [first]

        async def attempt() -> Any:
            if pending:  # tenacity counts the failed first attempt and waits before the next
                raise pending.pop()
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            return await self._attempt(start, timeout)

        return await self._retry.call(attempt, idempotent=info.idempotent, deadline=deadline)

    async def call_unary(
        self,
        multicallable: Any,
        method: str | bytes,
        request: Any,
        explicit_timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        """Call grpc's own (interceptor-free) unary ``multicallable`` under the policy; the response."""
        info, timeout, span, call_metadata = self._begin(method, explicit_timeout, metadata)

        async def start(attempt_timeout: float | None) -> Any:
            return await multicallable(
                request,
                timeout=attempt_timeout,
                metadata=call_metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        return await self._run_unary(start, info, timeout, span)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        """Run one unary call with deadline, breaker, retries and a CLIENT span (interceptor form)."""
        details = client_call_details
        info, timeout, span, call_metadata = self._begin(details.method, details.timeout, details.metadata)
        metadata = Metadata(*call_metadata)

        async def start(attempt_timeout: float | None) -> Any:
            attempt = ClientCallDetails(
                details.method, attempt_timeout, metadata, details.credentials, details.wait_for_ready
            )
            call = await continuation(attempt, request)
            await call  # the outcome decides breaker and retries
            return call

        return await self._run_unary(start, info, timeout, span)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        """Start a server stream with an inherited deadline, the breaker and a CLIENT span that ends with it."""
        details = client_call_details
        # Watches are long-lived: only an enclosing budget (or the caller) bounds them, not default_deadline.
        info = self._method(details.method)
        timeout = remaining_budget(details.timeout)
        span = self._start_span(info)
        metadata = Metadata(*(details.metadata or ()), *traceparent_of(span.get_span_context()))
        attempt = ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )
        breaker = self._breaker
        try:
            if breaker is not None:
                try:
                    breaker.before_call()
                except CircuitOpenError as exc:
                    raise CircuitOpenRpcError(exc) from None
            call = await continuation(attempt, request)
        except BaseException as exc:
            _end_span_error(span, exc)
            raise
        return self._stream(call, span)

    async def _stream(self, call: Any, span: trace.Span) -> AsyncIterator[Any]:
        # A stream tells the breaker about the endpoint once: its first response (healthy) or a failure before
        # it. A long-lived stream (a watch) must not hold the half-open probe until it ends, which would refuse
        # every other call to the endpoint meanwhile, and its later end (a replica stopping) is not a failed call.
        breaker = self._breaker
        try:
            async for response in call:
                if breaker is not None:
                    breaker.record_success()
                    breaker = None
                yield response
        except BaseException as exc:
            if breaker is not None:
                breaker.record(exc)
            _end_span_error(span, exc)
            raise
        if breaker is not None:
            breaker.record_success()
        span.end()


class _UnaryStreamInterceptor(UnaryStreamClientBase):
    """Files :meth:`MeshClientInterceptor.intercept_unary_stream` under server-streaming calls."""

    def __init__(self, core: MeshClientInterceptor) -> None:
        self._core = core

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        """Delegate to the shared interceptor."""
        return await self._core.intercept_unary_stream(continuation, client_call_details, request)


def _end_span_error(span: trace.Span, exc: BaseException) -> None:
    # As the stock aio client instrumentation: a failed status is the code and details, not an exception event.
    if span.is_recording():
        if isinstance(exc, grpc.aio.AioRpcError):
            span.set_attribute("rpc.grpc.status_code", exc.code().value[0])
            span.set_status(Status(StatusCode.ERROR, exc.details()))
        else:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.record_exception(exc)
    span.end()


class _UnaryUnary:
    """A unary method of a :class:`MeshChannel`: grpc's call under the mesh policy, as a coroutine."""

    __slots__ = ("_method", "_multicallable", "_policy")

    def __init__(self, policy: MeshClientInterceptor, multicallable: Any, method: str | bytes) -> None:
        self._policy = policy
        self._multicallable = multicallable
        self._method = method

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Awaitable[Any]:
        """Start the call; await the result for the response (failures raise ``grpc.aio.AioRpcError``)."""
        return self._policy.call_unary(
            self._multicallable,
            self._method,
            request,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )


class MeshChannel(_aio_channel.Channel):
    """A ``grpc.aio`` channel whose unary calls run the mesh policy without grpc's interceptor machinery.

    It builds on grpc.aio's private ``Channel`` and ``ChannelCredentials._credentials``: grpcio is pinned to
    the tested range and tests/unit/test_private_api_drift.py fails when either moves.

    Unary stub methods return a coroutine (await it, or wrap it in a task) instead of a call object; server
    streams are ordinary intercepted calls (iterate them, ``cancel()`` them).
    """

    def __init__(
        self,
        target: str,
        options: Sequence[tuple[str, Any]],
        credentials: grpc.ChannelCredentials | None,
        policy: MeshClientInterceptor,
    ) -> None:
        stream_interceptors = policy.interceptors()[1:]
        core_credentials = None if credentials is None else credentials._credentials  # type: ignore[attr-defined]
        super().__init__(target, options, core_credentials, None, stream_interceptors)
        self._policy = policy

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A unary method of this channel under the mesh policy."""
        multicallable = super().unary_unary(
            method, request_serializer, response_deserializer, _registered_method
        )
        return _UnaryUnary(self._policy, multicallable, method)


def client_policy(
    target: str, settings: Settings, service_name: str, server_identity: str = ""
) -> MeshClientInterceptor:
    """The policy ``create_channel`` applies to calls to ``target`` expecting the server ``server_identity``
    (``kind/name``, empty: the target's host name); the breaker is shared per target and server identity."""
    return MeshClientInterceptor(
        tracer=get_tracer(configure_tracing(settings, service_name)),
        breaker=breaker_for(
            target,
            identity=server_identity,
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout=settings.breaker_reset_timeout,
        ),
        retry=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            initial_backoff=settings.retry_initial_backoff,
            max_backoff=settings.retry_max_backoff,
        ),
        default_deadline=settings.default_deadline or None,
    )


def mesh_channel(
    target: str,
    settings: Settings,
    service_name: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] = (),
    server_identity: str = "",
) -> MeshChannel:
    """A channel to ``target`` (plaintext when ``credentials`` is None) with the mesh's client policy; its breaker
    is the one of ``target`` as ``server_identity`` (see :func:`client_policy`)."""
    return MeshChannel(
        target, options, credentials, client_policy(target, settings, service_name, server_identity)
    )
