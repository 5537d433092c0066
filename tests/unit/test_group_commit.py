"""Group commit (the planner's attempt writes, the audit log): concurrent writes share a flush."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentmesh._group_commit import GroupCommit


async def test_concurrent_items_share_flushes_and_each_gets_its_own_result() -> None:
    flushes: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        flushes.append(list(items))
        await asyncio.sleep(0.01)  # a transaction: items submitted meanwhile wait for the next flush
        return [item * 10 for item in items]

    batcher: GroupCommit[int, int] = GroupCommit(flush)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(50)))
    assert results == [n * 10 for n in range(50)]
    assert len(flushes) < 50 and sorted(n for batch in flushes for n in batch) == list(range(50))


async def test_a_failing_batch_is_retried_item_by_item_so_only_the_bad_item_fails() -> None:
    async def flush(items: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)
        if 13 in items:
            raise ValueError("item 13 breaks any transaction it is in")
        return list(items)

    batcher: GroupCommit[int, int] = GroupCommit(flush, max_batch=8)
    outcomes = await asyncio.gather(*(batcher.submit(n) for n in range(20)), return_exceptions=True)
    assert [o for o in outcomes if isinstance(o, Exception)] == [outcomes[13]]
    assert isinstance(outcomes[13], ValueError)
    assert [o for i, o in enumerate(outcomes) if i != 13] == [n for n in range(20) if n != 13]


async def test_a_lone_item_is_written_at_once() -> None:
    async def flush(items: Sequence[str]) -> list[str]:
        return [f"ok {item}" for item in items]

    batcher: GroupCommit[str, str] = GroupCommit(flush)
    assert await asyncio.wait_for(batcher.submit("x"), timeout=1) == "ok x"
    await batcher.close()


@pytest.mark.parametrize("max_batch", [1, 3])
async def test_batches_respect_their_bound(max_batch: int) -> None:
    sizes: list[int] = []

    async def flush(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(0)
        return list(items)

    batcher: GroupCommit[int, int] = GroupCommit(flush, max_batch=max_batch)
    await asyncio.gather(*(batcher.submit(n) for n in range(10)))
    assert max(sizes) <= max_batch


async def test_a_weighted_batch_stops_once_its_weight_reaches_the_bound() -> None:
    flushes: list[list[tuple[int, ...]]] = []

    async def flush(items: Sequence[tuple[int, ...]]) -> list[int]:
        flushes.append(list(items))
        await asyncio.sleep(0.01)
        return [len(item) for item in items]

    batcher: GroupCommit[tuple[int, ...], int] = GroupCommit(flush, max_batch=5, weight=len)
    items = [tuple(range(n % 4 + 1)) for n in range(20)]
    assert await asyncio.gather(*(batcher.submit(item) for item in items)) == [len(item) for item in items]
    for batch in flushes:  # full batches hold at least one item and stop as soon as the weight reaches 5
        assert batch and sum(map(len, batch[:-1])) < 5


async def test_without_alone_on_failure_a_failing_batch_fails_every_caller_in_it() -> None:
    calls: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        await asyncio.sleep(0.01)
        if 13 in items:
            raise RuntimeError("bad item")
        return list(items)

    batcher: GroupCommit[int, int] = GroupCommit(flush, alone_on_failure=False)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0)  # the first flush is running: the next two share the second flush
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in (12, 13)]
    assert await first == 0
    for future in rest:
        with pytest.raises(RuntimeError, match="bad item"):
            await future
    assert calls == [[0], [12, 13]]  # no one-by-one retry
