"""The snapshot load's pacing and the loop-stall meter it is judged by."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from agentmesh.services.registry._stalls import LoopStalls, Pacer, quick_handoff

_SCHEDSTAT = Path("/proc/thread-self/schedstat").exists()  # Linux: where the loop's thread was is known


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


def test_quick_handoff_shortens_the_switch_interval_only_inside() -> None:
    before = sys.getswitchinterval()
    with quick_handoff(0.0005):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert sys.getswitchinterval() == before


async def test_a_loop_waiting_on_a_gil_holding_worker_gets_its_turn_within_a_handoff() -> None:
    def hold() -> None:  # pure Python, no pacing: holds the GIL but for the interpreter's forced switches
        until = time.perf_counter() + 0.4
        while time.perf_counter() < until:
            sum(range(50))

    with quick_handoff():
        async with LoopStalls(tick=0.001) as stalls:
            await asyncio.to_thread(hold)
    # Each wake-up waits for the worker to hand the GIL over (0.5 ms) rather than the default 5 ms; loose bound,
    # the machine is shared.
    assert stalls.longest < 0.25


async def test_a_stall_spent_running_on_the_loop_is_told_apart_from_waiting() -> None:
    async with LoopStalls() as stalls:
        await asyncio.sleep(0.02)
        _busy(0.08)
        await asyncio.sleep(0.02)
    worst = stalls.worst
    assert worst.seconds == stalls.longest
    if _SCHEDSTAT:
        assert worst.on_cpu + worst.cpu_wait > 0.05  # busy on the loop (or waiting for a CPU to be)
        assert worst.gil_wait < 0.03
    assert "ms running on the loop" in worst.describe()


def test_overlapping_handoffs_restore_the_interval_the_first_found() -> None:
    before = sys.getswitchinterval()
    first, second = quick_handoff(0.0005), quick_handoff(0.0005)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # not last in, first out: the second load is still running
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == before
