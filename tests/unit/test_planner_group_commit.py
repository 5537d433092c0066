"""Group commit of the planner's attempt writes: concurrent writes share a flush, a bad one fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentmesh.services.planner.batching import GroupCommit


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
