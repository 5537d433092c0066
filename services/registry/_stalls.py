"""Work beside the event loop that leaves it its turns (:class:`Pacer`), and how long it went without one
(:class:`LoopStalls`): the snapshot load."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

__all__ = ["LoopStalls", "Pacer"]


class LoopStalls:
    """``async with LoopStalls() as stalls:``; afterwards ``stalls.longest`` is the longest event-loop stall, in
    seconds: how much later than asked a ``tick``-second sleep woke up (a loop that never stalls reads ~0)."""

    def __init__(self, tick: float = 0.005) -> None:
        self._tick = tick
        self._task: asyncio.Task[None] | None = None
        self.longest = 0.0

    async def _measure(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self._tick)
            self.longest = max(self.longest, time.perf_counter() - asked - self._tick)

    async def __aenter__(self) -> LoopStalls:
        self._task = asyncio.create_task(self._measure(), name="loop-stalls")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Pacer:
    """Called between steps of CPU work on a worker thread: every ``work`` seconds it rests ``rest`` seconds
    (GIL and CPU released). A thread holding the GIL without pause is, on a busy machine, often preempted by the
    OS while holding it, and the event loop waits for it to be scheduled again (stalls of 100s of ms at 100k
    agents); one that rests is rescheduled promptly (stalls of tens of ms)."""

    def __init__(self, work: float = 0.004, rest: float = 0.001) -> None:
        self._work, self._rest = work, rest
        self._until = time.perf_counter() + work

    def __call__(self) -> None:
        if time.perf_counter() > self._until:
            time.sleep(self._rest)
            self._until = time.perf_counter() + self._work
