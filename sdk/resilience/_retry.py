"""Retries with exponential backoff and full jitter, for transient failures only (tenacity does the loop).

Transient means: ``UNAVAILABLE``; ``RESOURCE_EXHAUSTED`` only when the server sent retry info (and then we
wait at least that long); ``DEADLINE_EXCEEDED`` only for idempotent calls. Anything else is final.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import tenacity
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tenacity.wait import wait_random_exponential

from agentmesh._errors import ResourceExhaustedError
from agentmesh.resilience._breaker import CircuitOpenError, CircuitOpenRpcError, error_code

T = TypeVar("T")

# Method name prefixes that are safe to repeat after a timeout (reads); others must be marked explicitly.
IDEMPOTENT_PREFIXES = ("Get", "List", "Describe", "Discover", "Explain", "Verify", "Check", "Watch")


def is_idempotent_method(method: str) -> bool:
    """Whether the gRPC method path ``/pkg.Service/Method`` is a read the mesh treats as idempotent."""
    return method.rpartition("/")[2].startswith(IDEMPOTENT_PREFIXES)


def retry_after(exc: BaseException) -> float | None:
    """The server's requested wait (``google.rpc.RetryInfo``) carried by ``exc``, if any."""
    if isinstance(exc, ResourceExhaustedError):
        return exc.retry_after
    if isinstance(exc, grpc.aio.AioRpcError):
        # Read the status details directly: agentmesh._errors.from_rpc_error only unpacks sync grpc.Call errors.
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.ToNanoseconds() / 1e9)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    The wait before retry ``n`` (1-based) is uniform in ``[0, min(max_backoff, initial_backoff * 2**(n-1))]``
    (full jitter), and at least the server's retry info for ``RESOURCE_EXHAUSTED``.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 2.0

    def is_retryable(self, exc: BaseException, *, idempotent: bool = False) -> bool:
        """Whether ``exc`` is a transient failure worth another attempt."""
        if isinstance(exc, (CircuitOpenError, CircuitOpenRpcError)):  # the breaker already knows: fail fast
            return False
        code = error_code(exc)
        if code is grpc.StatusCode.UNAVAILABLE:
            return True
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return idempotent
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return retry_after(exc) is not None
        return False

    def backoff(self, attempt: int) -> float:
        """The jittered wait after failed attempt number ``attempt`` (1-based)."""
        jitter = wait_random_exponential(multiplier=self.initial_backoff, max=self.max_backoff)
        return float(jitter(_State(attempt)))  # type: ignore[arg-type]

    def retrying(self, *, idempotent: bool = False, deadline: float | None = None) -> tenacity.AsyncRetrying:
        """A tenacity ``AsyncRetrying`` for this policy; ``deadline`` is an absolute ``time.monotonic()``."""
        jitter = wait_random_exponential(multiplier=self.initial_backoff, max=self.max_backoff)

        def wait(state: tenacity.RetryCallState) -> float:
            delay = float(jitter(state))
            exc = state.outcome.exception() if state.outcome else None
            requested = retry_after(exc) if exc is not None else None
            return max(delay, requested) if requested is not None else delay

        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(self.max_attempts)
        if deadline is not None:
            stop = stop | _StopAtDeadline(deadline)
        return tenacity.AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception(lambda exc: self.is_retryable(exc, idempotent=idempotent)),
            reraise=True,
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool = False,
        deadline: float | None = None,
    ) -> T:
        """Await ``fn()`` until it succeeds, fails for good, runs out of attempts or would pass ``deadline``."""
        # The first attempt runs without tenacity (most calls succeed at once, and building its loop costs
        # ~25 us a call); a retryable failure is then replayed as tenacity's first attempt, so the waits,
        # the attempt count and the deadline are the policy's as before.
        try:
            return await fn()
        except Exception as exc:
            if self.max_attempts <= 1 or not self.is_retryable(exc, idempotent=idempotent):
                raise
            first: Exception | None = exc

        async def again() -> T:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return await fn()

        async for attempt in self.retrying(idempotent=idempotent, deadline=deadline):
            with attempt:
                return await again()
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


class _StopAtDeadline(tenacity.stop.stop_base):
    """Stop when the next wait would end past the deadline (no attempt that is sure to time out)."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        upcoming = retry_state.upcoming_sleep or 0.0
        return time.monotonic() + upcoming >= self._deadline


class _State:
    """The slice of tenacity's retry state its wait strategies read."""

    def __init__(self, attempt: int) -> None:
        self.attempt_number = attempt
