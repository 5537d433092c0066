"""The idempotency cache: one run per (skill, key), shared by concurrent callers, bounded in size and time."""

from __future__ import annotations

import asyncio

import pytest

from agentmesh._errors import InvalidArgumentError, UnavailableError
from agentmesh.agent import IdempotencyCache
from agentmesh.agent._idempotency import call_fingerprint, fingerprint


class Counted:
    """A computation that counts its runs and can be held until released."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> str:
        self.runs += 1
        await self.release.wait()
        return f"result-{self.runs}"


async def test_a_repeated_key_returns_the_first_result_without_running_again() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    compute = Counted()
    assert await cache.run("s", "k1", "d", compute) == ("result-1", False)
    assert await cache.run("s", "k1", "d", compute) == ("result-1", True)
    assert compute.runs == 1
    # Keys are per skill, and another key runs again.
    assert await cache.run("other", "k1", "d", compute) == ("result-2", False)
    assert await cache.run("s", "k2", "d", compute) == ("result-3", False)


async def test_concurrent_calls_with_one_key_run_once_and_share_the_result() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    compute = Counted()
    compute.release.clear()
    calls = [asyncio.create_task(cache.run("s", "k", "d", compute)) for _ in range(5)]
    await asyncio.sleep(0)  # let all five reach the cache while the first is held
    compute.release.set()
    results = await asyncio.gather(*calls)
    assert compute.runs == 1
    assert sorted(replayed for _, replayed in results) == [False, True, True, True, True]
    assert {value for value, _ in results} == {"result-1"}


async def test_a_key_reused_with_a_different_input_is_invalid_argument() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    await cache.run("s", "k", fingerprint({"a": 1, "b": 2}), Counted())
    assert (await cache.run("s", "k", fingerprint({"b": 2, "a": 1}), Counted()))[1] is True  # key order is irrelevant
    with pytest.raises(InvalidArgumentError) as error:
        await cache.run("s", "k", fingerprint({"a": 2, "b": 2}), Counted())
    assert error.value.field == "idempotency_key"


async def test_failures_are_not_stored_so_a_retry_runs_again() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise UnavailableError("triton is down")
        return "ok"

    with pytest.raises(UnavailableError):
        await cache.run("s", "k", "d", flaky)
    assert await cache.run("s", "k", "d", flaky) == ("ok", False)
    assert attempts == 2


async def test_concurrent_waiters_share_a_failure() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    gate = asyncio.Event()

    async def failing() -> str:
        await gate.wait()
        raise UnavailableError("down")

    first = asyncio.create_task(cache.run("s", "k", "d", failing))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.run("s", "k", "d", Counted()))
    await asyncio.sleep(0)
    gate.set()
    for task in (first, second):
        with pytest.raises(UnavailableError):
            await task


async def test_when_the_first_caller_is_cancelled_a_waiter_takes_over() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    held = Counted()
    held.release.clear()
    first = asyncio.create_task(cache.run("s", "k", "d", held))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.run("s", "k", "d", Counted()))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == ("result-1", False)  # the waiter ran it itself
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_cancelled_waiter_does_not_cancel_the_run() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    held = Counted()
    held.release.clear()
    first = asyncio.create_task(cache.run("s", "k", "d", held))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.run("s", "k", "d", held))
    await asyncio.sleep(0)
    waiter.cancel()
    held.release.set()
    assert await first == ("result-1", False)


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache(max_entries=2)
    compute = Counted()
    await cache.run("s", "a", "d", compute)
    await cache.run("s", "b", "d", compute)
    await cache.run("s", "a", "d", compute)  # touch a: b is now the oldest
    await cache.run("s", "c", "d", compute)
    assert len(cache) == 2
    assert (await cache.run("s", "a", "d", compute))[1] is True
    assert (await cache.run("s", "b", "d", compute))[1] is False  # evicted, so it ran again


async def test_entries_expire_after_the_ttl() -> None:
    now = 100.0
    cache: IdempotencyCache[str] = IdempotencyCache(ttl=60, clock=lambda: now)
    compute = Counted()
    await cache.run("s", "k", "d", compute)
    now += 59
    assert await cache.run("s", "k", "d", compute) == ("result-1", True)
    now += 2  # the TTL counts from when the result was stored, not from the last replay
    assert await cache.run("s", "k", "d", compute) == ("result-2", False)


async def test_a_key_reused_by_another_caller_or_delegation_is_refused_even_while_running() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    held = Counted()
    held.release.clear()
    planner = call_fingerprint(
        caller="spiffe://td/service/planner", delegation=("acme", "u1", "pii:read"), input={"a": 1}
    )
    first = asyncio.create_task(cache.run("s", "k", planner, held))
    await asyncio.sleep(0)
    others = {
        "caller": call_fingerprint(
            caller="spiffe://td/service/other", delegation=("acme", "u1", "pii:read"), input={"a": 1}
        ),
        "delegation": call_fingerprint(caller="spiffe://td/service/planner", delegation=None, input={"a": 1}),
        "delegation,input": call_fingerprint(
            caller="spiffe://td/service/planner", delegation=("acme", "u2"), input={"a": 2}
        ),
    }
    for differs, other in others.items():
        with pytest.raises(InvalidArgumentError) as error:
            await cache.run("s", "k", other, Counted())
        assert (error.value.reason, error.value.metadata["differs"]) == ("IDEMPOTENCY_KEY_REUSED", differs)
        assert "spiffe://td/service/planner" not in error.value.message  # the first caller is not revealed
    held.release.set()
    assert await first == ("result-1", False)
    same = call_fingerprint(
        caller="spiffe://td/service/planner", delegation=("acme", "u1", "pii:read"), input={"a": 1}
    )
    assert await cache.run("s", "k", same, Counted()) == ("result-1", True)
