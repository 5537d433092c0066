"""A circuit breaker per endpoint (and expected server identity): closed → open after consecutive failures → half-open probe → closed.

pybreaker was considered; its async support is tied to Tornado, and the mesh needs a breaker that costs
nothing on the per-call fast path, so the state machine is here (small, tested). The state of every breaker
is exported as the ``agentmesh_circuit_breaker_state`` gauge.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf import any_pb2

from agentmesh._errors import MeshError, UnavailableError
from agentmesh.telemetry._metrics import BREAKER_STATE, BREAKER_TRANSITIONS

T = TypeVar("T")

# Status codes that say the endpoint is unhealthy; business errors (NOT_FOUND...) say it is fine.
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)


class BreakerState(enum.IntEnum):
    """Breaker states; the value is what the Prometheus gauge shows."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpenError(UnavailableError):
    """The endpoint's circuit is open: the call was not attempted (try another instance or later)."""

    default_reason = "CIRCUIT_OPEN"

    def __init__(self, endpoint: str, retry_after: float) -> None:
        super().__init__(
            f"circuit open for {endpoint}; retry in {retry_after:.1f}s",
            metadata={"endpoint": endpoint, "retry_after": f"{retry_after:.3f}"},
        )
        self.endpoint = endpoint
        self.retry_after = retry_after

    def _extra_details(self) -> list[any_pb2.Any]:
        # No RetryInfo: a retry policy would wait out the whole reset timeout, where another replica or
        # instance may answer at once (retry_after stays in the ErrorInfo metadata).
        return []


class CircuitOpenRpcError(grpc.aio.AioRpcError):
    """:class:`CircuitOpenError` as the ``AioRpcError`` stub callers handle (UNAVAILABLE, reason CIRCUIT_OPEN)."""

    def __init__(self, error: CircuitOpenError) -> None:
        status = error.to_status()
        super().__init__(
            code=grpc.StatusCode.UNAVAILABLE,
            initial_metadata=grpc.aio.Metadata(),
            trailing_metadata=grpc.aio.Metadata(*status.trailing_metadata),
            details=error.message,
            debug_error_string=None,
        )
        self.retry_after = error.retry_after


def error_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status code an exception stands for (AioRpcError or MeshError), else None."""
    if isinstance(exc, MeshError):
        return exc.code
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code()
    return None


def is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the endpoint is unhealthy (connection errors, timeouts, transient codes)."""
    code = error_code(exc)
    if code is not None:
        return code in FAILURE_CODES
    return isinstance(exc, OSError)  # includes ConnectionError and TimeoutError


class CircuitBreaker:
    """Fails fast while an endpoint is down, probing it again after ``reset_timeout`` seconds.

    Closed: calls pass; ``failure_threshold`` consecutive failures open the circuit. Open: calls fail at once
    with :class:`CircuitOpenError` until ``reset_timeout`` has passed. Half-open: up to
    ``half_open_max_calls`` probe calls pass; a success closes the circuit, a failure opens it again.

    Use :meth:`call` around any awaitable (Triton, HTTP), or :meth:`before_call` then one of
    :meth:`record_success` / :meth:`record_failure` / :meth:`record_ignored` per call.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or half_open_max_calls < 1 or reset_timeout < 0:
            raise ValueError("failure_threshold and half_open_max_calls must be >= 1, reset_timeout >= 0")
        self.endpoint = endpoint
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self._gauge = BREAKER_STATE.labels(endpoint)
        self._gauge.set(BreakerState.CLOSED)

    @property
    def state(self) -> BreakerState:
        """The current state (an open circuit whose reset timeout passed reports HALF_OPEN)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return self._state

    def before_call(self) -> None:
        """Admit one call or raise :class:`CircuitOpenError`; every admitted call must record its outcome."""
        state = self._state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.OPEN:
            waited = self._clock() - self._opened_at
            if waited < self.reset_timeout:
                raise CircuitOpenError(self.endpoint, self.reset_timeout - waited)
            self._transition(BreakerState.HALF_OPEN)
        if self._probes >= self.half_open_max_calls:
            raise CircuitOpenError(self.endpoint, self.reset_timeout)
        self._probes += 1

    def record_success(self) -> None:
        """The admitted call reached a healthy endpoint."""
        if self._state is BreakerState.CLOSED:
            self._failures = 0
            return
        if self._state is BreakerState.OPEN:  # a call admitted before the circuit opened: not a probe
            return
        self._release_probe()
        self._failures = 0
        self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """The admitted call found the endpoint unhealthy."""
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open()
            return
        if self._state is BreakerState.OPEN:
            return
        self._release_probe()
        self._open()

    def record_ignored(self) -> None:
        """The admitted call says nothing about the endpoint (e.g. the caller cancelled it)."""
        self._release_probe()

    def record(self, exc: BaseException | None) -> None:
        """Record an outcome from the call's exception (None for success)."""
        if exc is None:
            self.record_success()
        elif is_failure(exc):
            self.record_failure()
        elif error_code(exc) is grpc.StatusCode.CANCELLED or not isinstance(exc, Exception):
            self.record_ignored()
        else:
            self.record_success()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        self.before_call()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.record(exc)
            raise
        self.record_success()
        return result

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._transition(BreakerState.OPEN)

    def _release_probe(self) -> None:
        if self._probes:
            self._probes -= 1

    def _transition(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is BreakerState.CLOSED:
            self._probes = 0
        self._gauge.set(state)
        BREAKER_TRANSITIONS.labels(self.endpoint, state.name.lower()).inc()


_breakers: dict[tuple[str, str, int, float], CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(
    endpoint: str, *, identity: str = "", failure_threshold: int = 5, reset_timeout: float = 10.0
) -> CircuitBreaker:
    """The process-wide breaker of ``endpoint`` reached as ``identity`` (created on first use), shared by every
    channel to that endpoint that expects that server identity.

    ``identity`` is the server identity a channel verifies (``kind/name``; empty: the endpoint's own host name).
    Channels to one address that expect different identities have different breakers: a channel failing
    because the server there is not the one it expects does not open the circuit of a channel that finds the
    server it expects. The breaker's name (its metrics label, its errors) says both: ``host:port as kind/name``.
    """
    # Clients with other thresholds (settings differ only in tests of one process) get their own breaker: with
    # the first creator's, a client could never see its own threshold at work.
    key = (endpoint, identity, failure_threshold, reset_timeout)
    breaker = _breakers.get(key)
    if breaker is None:
        with _breakers_lock:
            breaker = _breakers.get(key)
            if breaker is None:
                name = f"{endpoint} as {identity}" if identity else endpoint
                breaker = CircuitBreaker(name, failure_threshold=failure_threshold, reset_timeout=reset_timeout)
                _breakers[key] = breaker
    return breaker
