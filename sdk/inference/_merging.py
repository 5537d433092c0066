"""Concurrent text calls of one model merged into one Triton request.

Callers that ask the same model within one event-loop turn (the cohort that one batched response has just
woken, or a burst of tickets) share one request of up to the model's max batch. The per-request cost in this
process and in tritonserver is then paid once per request instead of once per text, and Triton receives
whole batches instead of a cohort split across its instances while its first texts arrive. A lone caller
waits for no one: its request leaves on the next loop turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agentmesh._errors import DeadlineExceededError, InvalidArgumentError
from agentmesh.inference._results import InferenceResult

__all__ = ["TextCallMerger"]

# (model, texts, outputs, deadline) -> the model's result for ``texts``, in order.
Run = Callable[[str, list[str], list[str] | None, float | None], Awaitable[InferenceResult]]
# Calls merge when they agree on the model, outputs, batch limit and whether they give a deadline; the
# deadlines themselves differ (each agent passes what is left of its own caller's).
_Key = tuple[str, tuple[str, ...] | None, bool, int]


@dataclass(slots=True)
class _Waiter:
    texts: list[str]
    future: asyncio.Future[InferenceResult]
    end: float | None = None  # the caller's own deadline, loop time
    timer: asyncio.TimerHandle | None = None


class TextCallMerger:
    """Merges concurrent ``run`` calls that differ only in their texts (see the module docstring)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._pending: dict[_Key, list[_Waiter]] = {}
        self._sending: set[asyncio.Task[None]] = set()  # strong references until each send ends

    async def call(
        self, model: str, texts: list[str], outputs: list[str] | None, deadline: float | None, limit: int
    ) -> InferenceResult:
        """``run(model, texts, outputs, deadline)``, sent together with the other calls of this loop turn
        (at most ``limit`` texts per request; ``texts`` must fit in one).
        """
        key: _Key = (model, tuple(outputs) if outputs else None, deadline is not None, limit)
        loop = asyncio.get_running_loop()
        waiters = self._pending.get(key)
        if waiters is None:
            waiters = self._pending[key] = []
            loop.call_soon(self._flush, key)
        waiter = _Waiter(texts, loop.create_future())
        if deadline is not None:
            # The shared request runs until the latest of its callers' deadlines; each caller keeps its own.
            waiter.end = loop.time() + deadline
            waiter.timer = loop.call_later(max(deadline, 0.0), _expire, waiter, model, deadline)
        waiters.append(waiter)
        # A caller that gives up (cancelled, deadline passed) only drops its own future: the shared request
        # goes on for the others.
        return await waiter.future

    def _flush(self, key: _Key) -> None:
        limit = key[3]
        batch: list[_Waiter] = []
        size = 0
        for waiter in self._pending.pop(key):
            if batch and size + len(waiter.texts) > limit:
                self._send(key, batch)
                batch, size = [], 0
            batch.append(waiter)
            size += len(waiter.texts)
        self._send(key, batch)

    def _send(self, key: _Key, waiters: list[_Waiter]) -> None:
        task = asyncio.ensure_future(self._request(key, waiters))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _request(self, key: _Key, waiters: list[_Waiter]) -> None:
        waiters = [w for w in waiters if not w.future.done()]  # callers that gave up before the send
        if not waiters:
            return
        model, outputs, timed, _ = key
        deadline = None
        if timed:
            deadline = max(w.end for w in waiters if w.end is not None) - asyncio.get_running_loop().time()
        texts = waiters[0].texts if len(waiters) == 1 else [t for w in waiters for t in w.texts]
        try:
            result = await self._run(model, texts, list(outputs) if outputs else None, deadline)
        except InvalidArgumentError as exc:
            if len(waiters) == 1:
                _fail(waiters, exc)
            else:  # one caller's texts may be what the model refused: the others must not fail with it
                for waiter in waiters:
                    self._send(key, [waiter])
            return
        except asyncio.CancelledError:
            for waiter in waiters:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                waiter.future.cancel()
            raise
        except Exception as exc:  # the same error for every caller that shared the request
            _fail(waiters, exc)
            return
        if len(waiters) == 1:
            _settle(waiters[0], result)
            return
        offset = 0
        for waiter in waiters:
            end = offset + len(waiter.texts)
            _settle(
                waiter,
                InferenceResult(
                    model=result.model,
                    version=result.version,
                    outputs={name: values[offset:end] for name, values in result.outputs.items()},
                    latency_s=result.latency_s,
                ),
            )
            offset = end


def _settle(waiter: _Waiter, result: InferenceResult) -> None:
    if waiter.timer is not None:
        waiter.timer.cancel()
    if not waiter.future.done():
        waiter.future.set_result(result)


def _fail(waiters: list[_Waiter], exc: Exception) -> None:
    for waiter in waiters:
        if waiter.timer is not None:
            waiter.timer.cancel()
        if not waiter.future.done():
            waiter.future.set_exception(exc)


def _expire(waiter: _Waiter, model: str, deadline: float) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(
            DeadlineExceededError(
                f"deadline of {deadline:.3f} s passed calling Triton model {model!r}",
                metadata={"model": model},
            )
        )
