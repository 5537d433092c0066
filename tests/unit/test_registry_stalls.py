"""The snapshot load's pacing and the loop-stall meter it is judged by."""

from __future__ import annotations

import asyncio
import time

from agentmesh.services.registry._stalls import LoopStalls, Pacer


def _busy(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


async def test_a_blocking_step_on_the_loop_is_measured_as_a_stall() -> None:
    async with LoopStalls() as stalls:
        await asyncio.sleep(0.02)
        _busy(0.08)  # the loop blocked
        await asyncio.sleep(0.02)
    assert 0.06 < stalls.longest < 1.0


async def test_work_paced_on_a_worker_thread_leaves_the_loop_its_turns() -> None:
    def work() -> None:
        pace = Pacer()
        until = time.perf_counter() + 0.3
        while time.perf_counter() < until:
            sum(range(200))  # CPU work holding the GIL
            pace()

    async with LoopStalls() as stalls:
        await asyncio.to_thread(work)
    assert stalls.longest < 0.25  # loose: the test machine is shared (the bench measures)


def test_a_pacer_rests_only_once_its_work_slice_is_over() -> None:
    pace = Pacer(work=0.05, rest=0.02)
    started = time.perf_counter()
    pace()  # within the slice: no rest
    assert time.perf_counter() - started < 0.02
    time.sleep(0.06)
    before = time.perf_counter()
    pace()
    assert time.perf_counter() - before >= 0.02
