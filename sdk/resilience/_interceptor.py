"""The mesh's one client interceptor: deadline, circuit breaker, retries and a CLIENT span per call.

One combined interceptor because every ``grpc.aio`` client interceptor layer costs a task hop and a call
wrapper per call. The fast path (a call that succeeds first time) does no allocation beyond the new call
details and the span; tenacity is entered only after a transient failure.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc.aio import AioRpcError, ClientCallDetails, Metadata
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AnyValue

from agentmesh._settings import Settings
from agentmesh.resilience._breaker import CircuitBreaker, CircuitOpenError, CircuitOpenRpcError, breaker_for
from agentmesh.resilience._deadline import remaining_budget
from agentmesh.resilience._retry import RetryPolicy, is_idempotent_method
from agentmesh.telemetry._tracing import configure_tracing, get_tracer, traceparent_of

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


class MeshClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
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
        return self._tracer.start_span(
            info.name,
            kind=SpanKind.CLIENT,
            attributes=info.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def _details(
        self, details: ClientCallDetails, timeout: float | None, span: trace.Span
    ) -> ClientCallDetails:
        metadata = (
            Metadata(*details.metadata, *traceparent_of(span.get_span_context()))
            if details.metadata
            else (Metadata(*traceparent_of(span.get_span_context())))
        )
        return ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        """Run one unary call with deadline, breaker, retries and a CLIENT span."""
        info = self._method(client_call_details.method)
        explicit = client_call_details.timeout
        timeout = remaining_budget(self._default_deadline if explicit is None else explicit)
        deadline = None if timeout is None else time.monotonic() + timeout
        span = self._start_span(info)
        details = self._details(client_call_details, timeout, span)
        try:
            call = await self._attempt(continuation, details, request)
        except AioRpcError as first:
            if self._retry is None or not self._retry.is_retryable(first, idempotent=info.idempotent):
                _end_span_error(span, first)
                raise
            try:
                call = await self._retry_after_failure(continuation, details, request, first, info, deadline)
            except BaseException as exc:
                _end_span_error(span, exc)
                raise
        except BaseException as exc:
            _end_span_error(span, exc)
            raise
        span.end()  # rpc.grpc.status_code was set to OK at start, as the stock instrumentation does
        return call

    async def _attempt(
        self, continuation: Callable[..., Any], details: ClientCallDetails, request: Any
    ) -> Any:
        breaker = self._breaker
        if breaker is not None:
            try:
                breaker.before_call()
            except CircuitOpenError as exc:
                raise CircuitOpenRpcError(exc) from None
        try:
            call = await continuation(details, request)
            await call  # the outcome decides breaker and retries
        except BaseException as exc:
            if breaker is not None:
                breaker.record(exc)
            raise
        if breaker is not None:
            breaker.record_success()
        return call

    async def _retry_after_failure(
        self,
        continuation: Callable[..., Any],
        details: ClientCallDetails,
        request: Any,
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
            retry_details = ClientCallDetails(
                details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
            )
            return await self._attempt(continuation, retry_details, request)

        return await self._retry.call(attempt, idempotent=info.idempotent, deadline=deadline)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        """Start a server stream with an inherited deadline, the breaker and a CLIENT span that ends with it."""
        info = self._method(client_call_details.method)
        timeout = remaining_budget(client_call_details.timeout)
        span = self._start_span(info)
        details = self._details(client_call_details, timeout, span)
        breaker = self._breaker
        try:
            if breaker is not None:
                try:
                    breaker.before_call()
                except CircuitOpenError as exc:
                    raise CircuitOpenRpcError(exc) from None
            call = await continuation(details, request)
        except BaseException as exc:
            _end_span_error(span, exc)
            raise
        return self._stream(call, span)

    async def _stream(self, call: Any, span: trace.Span) -> AsyncIterator[Any]:
        breaker = self._breaker
        try:
            async for response in call:
                yield response
        except BaseException as exc:
            if breaker is not None:
                breaker.record(exc)
            _end_span_error(span, exc)
            raise
        if breaker is not None:
            breaker.record_success()
        span.end()


class _UnaryStreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):
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


def client_interceptors(target: str, settings: Settings, service_name: str) -> list[Any]:
    """The interceptors ``create_channel`` puts on a channel to ``target`` (breaker shared per endpoint)."""
    interceptor = MeshClientInterceptor(
        tracer=get_tracer(configure_tracing(settings, service_name)),
        breaker=breaker_for(
            target,
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
    return interceptor.interceptors()
