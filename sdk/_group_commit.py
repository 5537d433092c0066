"""Group commit: concurrent writes of one kind share a transaction.

Callers ``await batcher.submit(item)``; while one flush runs, new items queue, and the next flush takes all of
them (up to ``max_batch``, counted in ``weight(item)``). Nothing waits for a timer: at one item in flight a
flush starts at once, under load batches grow by themselves. With ``alone_on_failure`` a failed batch of several
items is retried one item per flush, so one bad item (or a deadlock victim) fails alone; otherwise every caller
of the batch gets its exception. Used by the planner (attempt starts and ends) and the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Runs ``flush(items) -> results`` (one result per item, in order) for everything submitted meanwhile."""

    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        weight: Callable[[T], int] | None = None,
        alone_on_failure: bool = True,
        name: str = "",
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._weight = weight
        self._alone_on_failure = alone_on_failure
        self._name = name or "group-commit"
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Queue ``item``; returns its result once the transaction that wrote it has committed."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name=self._name)
        return await done

    async def _write(self) -> None:
        while self._queue:
            taken = self._take()
            batch, self._queue = self._queue[:taken], self._queue[taken:]
            live = [(item, done) for item, done in batch if not done.done()]  # callers cancelled meanwhile
            if not live:
                continue
            try:
                results = await self._flush([item for item, _ in live])
            except Exception as exc:
                if len(live) == 1 or not self._alone_on_failure:
                    for _, done in live:
                        _settle(done, exc=exc)
                else:  # one at a time: each item succeeds or fails on its own
                    for item, done in live:
                        try:
                            _settle(done, (await self._flush([item]))[0])
                        except Exception as one:
                            _settle(done, exc=one)
                continue
            for (_, done), result in zip(live, results, strict=True):
                _settle(done, result)

    def _take(self) -> int:
        """How many queued items the next flush takes: up to ``max_batch`` items, or weight (at least one)."""
        if self._weight is None:
            return self._max_batch
        taken = total = 0
        for item, _ in self._queue:
            if taken and total >= self._max_batch:
                break
            total += self._weight(item)
            taken += 1
        return taken

    async def close(self) -> None:
        """Wait for queued items to be written."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer


def _settle(done: asyncio.Future[R], result: R | None = None, *, exc: BaseException | None = None) -> None:
    if done.done():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(result)  # type: ignore[arg-type]
