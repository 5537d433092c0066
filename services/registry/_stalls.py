"""Work beside the event loop that leaves it its turns (:class:`Pacer`, :func:`quick_handoff`), and how long it
went without one (:class:`LoopStalls`): the snapshot load."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from types import TracebackType

__all__ = ["LoopStalls", "Pacer", "Stall", "quick_handoff"]

# How long a thread asking for the GIL waits for the holder to hand it over, while a load runs beside the loop.
HANDOFF_SECONDS = 0.0005


class _ThreadTimes:
    """(seconds on a CPU, seconds runnable but waiting for one) of the thread that made it, from Linux schedstat;
    (0.0, 0.0) where the kernel does not say."""

    def __init__(self) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

    def __call__(self) -> tuple[float, float]:
        if self._fd is None:
            return 0.0, 0.0
        try:
            on_cpu, waiting = os.pread(self._fd, 64, 0).split()[:2]
            return int(on_cpu) / 1e9, int(waiting) / 1e9
        except (OSError, ValueError):
            return 0.0, 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclasses.dataclass(frozen=True)
class Stall:
    """One late wake-up of the loop: ``seconds`` late, and where the loop's thread was from the moment it went to
    sleep until it woke: ``on_cpu`` running (this process's code on the loop), ``cpu_wait`` runnable but waiting
    for a CPU (the OS running other work: a busy machine), ``gil_wait`` neither, beyond the sleep it asked for
    (blocked: waiting for the GIL held by another thread of the process)."""

    seconds: float = 0.0
    on_cpu: float = 0.0
    cpu_wait: float = 0.0
    gil_wait: float = 0.0

    def describe(self) -> str:
        return (
            f"{1000 * self.seconds:.1f} ms: {1000 * self.on_cpu:.1f} ms running on the loop, "
            f"{1000 * self.cpu_wait:.1f} ms waiting for a CPU, {1000 * self.gil_wait:.1f} ms waiting for the GIL"
        )


class LoopStalls:
    """``async with LoopStalls() as stalls:``; afterwards ``stalls.longest`` is the longest event-loop stall, in
    seconds: how much later than asked a ``tick``-second sleep woke up (a loop that never stalls reads ~0), and
    ``stalls.worst`` says where the loop's thread was during it (:class:`Stall`; the parts read 0 where the kernel
    does not say)."""

    def __init__(self, tick: float = 0.005) -> None:
        self._tick = tick
        self._task: asyncio.Task[None] | None = None
        self.worst = Stall()

    @property
    def longest(self) -> float:
        return self.worst.seconds

    async def _measure(self) -> None:
        times = _ThreadTimes()  # opened here: on the loop's thread
        try:
            while True:
                asked, (cpu_before, wait_before) = time.perf_counter(), times()
                await asyncio.sleep(self._tick)
                slept = time.perf_counter() - asked
                late = slept - self._tick
                if late > self.worst.seconds:
                    on_cpu, waiting = times()
                    on_cpu, waiting = on_cpu - cpu_before, waiting - wait_before
                    self.worst = Stall(late, on_cpu, waiting, max(0.0, late - on_cpu - waiting))
        finally:
            times.close()

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


_handoff_users = 0
_handoff_saved = 0.0


@contextlib.contextmanager
def quick_handoff(seconds: float = HANDOFF_SECONDS) -> Iterator[None]:
    """While inside, a thread asking for the GIL gets it from a CPU-bound holder within ``seconds`` (CPython's
    switch interval, 5 ms by default). The event loop asks for the GIL after every wait and socket call, so with a
    worker thread busy beside it each of those could cost it up to 5 ms: a health answer needs several.

    The interval is the process's: loads that overlap (replicas in one test process) share the shortened one, and
    the last to leave restores the interval the first found."""
    global _handoff_users, _handoff_saved
    if _handoff_users == 0:
        _handoff_saved = sys.getswitchinterval()
    _handoff_users += 1
    sys.setswitchinterval(min(sys.getswitchinterval(), seconds))
    try:
        yield
    finally:
        _handoff_users -= 1
        if _handoff_users == 0:
            sys.setswitchinterval(_handoff_saved)


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
