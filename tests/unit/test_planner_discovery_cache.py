"""The planner keeps the discovery answers its steps use fresh, so a step's agent is known without waiting for
the registry (and the step starts in the transaction that claims it); a query no step asks any more is dropped,
and a registry that does not answer is probed rarely (its circuit breaker counts those probes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentmesh._errors import UnavailableError
from agentmesh._settings import Settings
from agentmesh.services.planner import dispatch
from agentmesh.services.planner.dispatch import Dispatcher
from agentmesh.services.planner.plans import StepSpec
from agentmesh.v1 import agent_pb2, registry_pb2

SPEC = StepSpec(step_id="one", skill="shout", agent={"names": ["testing/worker"]})
TTL = 0.2


class Registry:
    """Answers with instance ``pick`` (changeable), counts the calls, or fails while ``down``."""

    def __init__(self) -> None:
        self.pick = "a"
        self.calls = 0
        self.down = False

    async def discover(self, **_: Any) -> registry_pb2.DiscoverAgentsResponse:
        self.calls += 1
        if self.down:
            raise UnavailableError("registry away")
        card = agent_pb2.AgentCard(namespace="testing", name="worker", version="1.0.0", endpoint="127.0.0.1:1")
        instance = registry_pb2.AgentInstance(instance_id=self.pick, card=card)
        return registry_pb2.DiscoverAgentsResponse(
            candidates=[registry_pb2.Candidate(instance=instance, score=1.0, reasons=["best"], matched_skill="shout")]
        )


@contextlib.asynccontextmanager
async def refreshing(dispatcher: Dispatcher) -> AsyncIterator[None]:
    task = asyncio.create_task(dispatcher.keep_fresh())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_peek_answers_only_from_a_fresh_cached_answer() -> None:
    registry = Registry()
    dispatcher = Dispatcher(Settings(planner_discovery_cache_ttl=TTL), registry)  # type: ignore[arg-type]
    assert dispatcher.peek(SPEC) is None and registry.calls == 0  # nothing cached: no call, no waiting
    await dispatcher.choose(SPEC)
    choice = dispatcher.peek(SPEC)
    assert choice is not None and choice.instance_id == "a" and "ranked first of 1" in choice.reason
    await asyncio.sleep(TTL * 1.5)
    assert dispatcher.peek(SPEC) is None  # aged out, and nothing kept it fresh


async def test_queries_in_use_are_kept_fresh_and_follow_the_registry() -> None:
    registry = Registry()
    dispatcher = Dispatcher(Settings(planner_discovery_cache_ttl=TTL), registry)  # type: ignore[arg-type]
    async with refreshing(dispatcher):
        await dispatcher.choose(SPEC)
        registry.pick = "b"  # the registry now prefers another instance
        for _ in range(6):
            await asyncio.sleep(TTL / 2)
            assert dispatcher.peek(SPEC) is not None  # never aged out while in use
        choice = dispatcher.peek(SPEC)
        assert choice is not None and choice.instance_id == "b"
        assert 3 <= registry.calls <= 12  # about one refresh per half lifetime, not one per step


async def test_a_query_nobody_asks_is_dropped_and_a_silent_registry_is_probed_rarely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "_KEEP_WARM", TTL)
    registry = Registry()
    dispatcher = Dispatcher(Settings(planner_discovery_cache_ttl=TTL), registry)  # type: ignore[arg-type]
    async with refreshing(dispatcher):
        await dispatcher.choose(SPEC)
        await asyncio.sleep(TTL * 3)
        calls = registry.calls
        await asyncio.sleep(TTL * 2)
        assert registry.calls == calls and dispatcher.peek(SPEC) is None  # forgotten: no more refreshes

    monkeypatch.setattr(dispatch, "_AWAY_PAUSE", 1.0)
    registry = Registry()
    dispatcher = Dispatcher(Settings(planner_discovery_cache_ttl=TTL), registry)  # type: ignore[arg-type]
    async with refreshing(dispatcher):
        await dispatcher.choose(SPEC)
        registry.down = True
        await asyncio.sleep(1.5)
        assert registry.calls <= 3  # the first answer, then at most two failing probes in 1.5 s (not fifteen)
