"""How long the event loop went without a turn while some work ran beside it (the snapshot load)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

__all__ = ["LoopStalls"]


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
