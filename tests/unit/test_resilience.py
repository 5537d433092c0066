"""Retries, backoff, circuit breaker and deadlines as a caller of a flaky dependency sees them."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from agentmesh._errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from agentmesh.resilience import (
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    breaker_for,
    is_idempotent_method,
    remaining_budget,
    with_deadline,
)

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.004)


class Flaky:
    """Fails with the given errors in turn, then answers "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_unavailable_is_retried_until_success() -> None:
    flaky = Flaky(UnavailableError("down"), UnavailableError("still down"))
    assert await FAST.call(flaky) == "ok"
    assert flaky.calls == 3


async def test_retries_stop_after_max_attempts_with_the_last_error() -> None:
    flaky = Flaky(*(UnavailableError(f"down {i}") for i in range(10)))
    with pytest.raises(UnavailableError, match="down 3"):
        await FAST.call(flaky)
    assert flaky.calls == 4


@pytest.mark.parametrize(
    "error",
    [InvalidArgumentError("bad"), NotFoundError("gone"), ResourceExhaustedError("quota, no retry info")],
)
async def test_non_transient_errors_are_not_retried(error: Exception) -> None:
    flaky = Flaky(error)
    with pytest.raises(type(error)):
        await FAST.call(flaky)
    assert flaky.calls == 1


async def test_deadline_exceeded_is_retried_only_for_idempotent_calls() -> None:
    not_idempotent = Flaky(DeadlineExceededError("slow"))
    with pytest.raises(DeadlineExceededError):
        await FAST.call(not_idempotent)
    assert not_idempotent.calls == 1
    idempotent = Flaky(DeadlineExceededError("slow"))
    assert await FAST.call(idempotent, idempotent=True) == "ok"
    assert idempotent.calls == 2


async def test_resource_exhausted_with_retry_info_waits_at_least_that_long() -> None:
    flaky = Flaky(ResourceExhaustedError("slow down", retry_after=0.05))
    started = time.monotonic()
    assert await FAST.call(flaky) == "ok"
    assert time.monotonic() - started >= 0.05
    assert flaky.calls == 2


async def test_no_retry_is_started_that_would_end_past_the_deadline() -> None:
    slow = RetryPolicy(max_attempts=5, initial_backoff=10.0, max_backoff=10.0)
    flaky = Flaky(*(UnavailableError("down") for _ in range(5)))
    # Backoff is uniform in [0, 10] s; a 10 ms budget leaves room for a retry only if the draw is tiny.
    with pytest.raises(UnavailableError):
        await slow.call(flaky, deadline=time.monotonic() + 0.01)
    assert flaky.calls <= 2


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (8, 0.5)]:
        waits = [policy.backoff(attempt) for _ in range(300)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap * 0.8 and min(waits) < cap * 0.2  # spread over the whole range


def test_grpc_errors_are_classified_like_mesh_errors() -> None:
    def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "x", None)

    policy = RetryPolicy()
    assert policy.is_retryable(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert not policy.is_retryable(rpc_error(grpc.StatusCode.PERMISSION_DENIED))
    assert not policy.is_retryable(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert policy.is_retryable(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), idempotent=True)
    assert not policy.is_retryable(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert not policy.is_retryable(CircuitOpenError("x:1", 1.0))


def test_reads_are_idempotent_and_writes_are_not() -> None:
    assert is_idempotent_method("/agentmesh.v1.RegistryService/GetAgent")
    assert is_idempotent_method("/agentmesh.v1.RegistryService/DiscoverAgents")
    assert not is_idempotent_method("/agentmesh.v1.TaskService/SubmitTask")
    assert not is_idempotent_method("/agentmesh.v1.AgentService/Invoke")


def _gauge(endpoint: str) -> float | None:
    return REGISTRY.get_sample_value("agentmesh_circuit_breaker_state", {"endpoint": endpoint})


async def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit-a:1", failure_threshold=3, reset_timeout=5.0, clock=clock)
    down = Flaky(*(UnavailableError("down") for _ in range(10)))
    for _ in range(3):
        with pytest.raises(UnavailableError):
            await breaker.call(down)
    assert breaker.state is BreakerState.OPEN
    assert _gauge("unit-a:1") == 2
    with pytest.raises(CircuitOpenError) as refused:
        await breaker.call(down)
    assert down.calls == 3  # the open circuit did not call the dependency
    assert isinstance(refused.value, UnavailableError)
    assert refused.value.reason == "CIRCUIT_OPEN" and 0 < refused.value.retry_after <= 5.0


async def test_business_errors_and_successes_keep_the_circuit_closed() -> None:
    breaker = CircuitBreaker("unit-b:1", failure_threshold=2, clock=Clock())
    for flaky in [
        Flaky(UnavailableError("down")),
        Flaky(NotFoundError("no such agent")),
        Flaky(UnavailableError("down")),
    ]:
        with pytest.raises((UnavailableError, NotFoundError)):
            await breaker.call(flaky)
    assert breaker.state is BreakerState.CLOSED  # failures were not consecutive
    assert _gauge("unit-b:1") == 0


async def test_half_open_admits_one_probe_whose_outcome_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit-c:1", failure_threshold=1, reset_timeout=5.0, clock=clock)
    with pytest.raises(UnavailableError):
        await breaker.call(Flaky(UnavailableError("down")))
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN

    probe_started = asyncio.Event()
    release = asyncio.Event()

    async def slow_failure() -> str:
        probe_started.set()
        await release.wait()
        raise UnavailableError("still down")

    probe = asyncio.create_task(breaker.call(slow_failure))
    await probe_started.wait()
    assert _gauge("unit-c:1") == 1
    with pytest.raises(CircuitOpenError):  # only one probe at a time
        await breaker.call(Flaky())
    release.set()
    with pytest.raises(UnavailableError):
        await probe
    assert breaker.state is BreakerState.OPEN  # failed probe: open again for a full reset timeout

    clock.now += 5.0
    assert await breaker.call(Flaky()) == "ok"
    assert breaker.state is BreakerState.CLOSED
    assert _gauge("unit-c:1") == 0


async def test_retry_and_breaker_compose_for_non_grpc_clients() -> None:
    breaker = CircuitBreaker("unit-d:1", failure_threshold=2, clock=Clock())
    flaky = Flaky(*(UnavailableError("down") for _ in range(10)))
    with pytest.raises(CircuitOpenError):
        await FAST.call(lambda: breaker.call(flaky))
    assert flaky.calls == 2  # the third attempt met an open circuit, and that is final


def test_with_deadline_bounds_and_nested_blocks_only_shrink() -> None:
    assert remaining_budget(10.0) == 10.0
    assert remaining_budget(None) is None
    with with_deadline(2.0):
        assert 1.9 < remaining_budget(10.0) <= 2.0  # type: ignore[operator]
        assert remaining_budget(0.5) == 0.5
        with with_deadline(30.0):
            assert remaining_budget(None) <= 2.0  # type: ignore[operator]
        with with_deadline(1.0):
            assert remaining_budget(None) <= 1.0  # type: ignore[operator]
    assert remaining_budget(None) is None


async def test_a_long_lived_stream_does_not_hold_the_half_open_probe() -> None:
    """A watch admitted as the half-open probe settles the breaker with its first message, so other calls to
    the endpoint are admitted while it stays open, and its later end counts as no failure."""
    from opentelemetry import trace

    from agentmesh.resilience import CircuitBreaker
    from agentmesh.resilience._interceptor import MeshClientInterceptor

    now = [0.0]
    breaker = CircuitBreaker("127.0.0.1:9", failure_threshold=1, reset_timeout=1.0, clock=lambda: now[0])
    breaker.record_failure()  # open
    now[0] = 2.0  # past the reset timeout: the next call is the probe
    policy = MeshClientInterceptor(
        tracer=trace.get_tracer("test"), breaker=breaker, retry=None, default_deadline=None
    )
    release = asyncio.Event()

    class Watch:
        def __aiter__(self) -> Watch:
            self.sent = False
            return self

        async def __anext__(self) -> str:
            if not self.sent:
                self.sent = True
                return "snapshot"
            await release.wait()
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "replica stopping")

    async def start(details: object, request: object) -> Watch:
        return Watch()

    details = grpc.aio.ClientCallDetails("/agentmesh.v1.RegistryService/WatchRevocations", None, None, None, None)
    stream = await policy.intercept_unary_stream(start, details, b"")
    assert await stream.__anext__() == "snapshot"
    breaker.before_call()  # admitted: the watch settled the probe with its first message
    breaker.record_success()
    release.set()
    with pytest.raises(grpc.aio.AioRpcError):
        await stream.__anext__()
    assert breaker.state.name == "CLOSED"  # the watch's end did not count as a failure


def test_one_address_expected_as_two_identities_has_two_breakers() -> None:
    registry = breaker_for("unit-shared:7400", identity="service/registry", failure_threshold=1)
    planner = breaker_for("unit-shared:7400", identity="service/planner", failure_threshold=1)
    assert registry is not planner
    assert breaker_for("unit-shared:7400", identity="service/registry", failure_threshold=1) is registry  # shared
    # ... by clients of the same thresholds: another threshold is never silently replaced by the first one's
    assert breaker_for("unit-shared:7400", identity="service/registry", failure_threshold=1000) is not registry
    assert breaker_for("unit-shared:7400") is not registry  # a channel verifying the address's own name
    registry.before_call()
    registry.record_failure()
    assert registry.state is BreakerState.OPEN
    assert planner.state is BreakerState.CLOSED
    planner.before_call()  # admitted: the planner channel's circuit is its own
    planner.record_success()
    with pytest.raises(CircuitOpenError, match="circuit open for unit-shared:7400 as service/registry"):
        registry.before_call()
    assert _gauge("unit-shared:7400 as service/registry") == BreakerState.OPEN
    assert _gauge("unit-shared:7400 as service/planner") == BreakerState.CLOSED
