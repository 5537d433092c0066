"""TaskChanges: a watcher armed before its read is woken by a commit made while the read ran."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentmesh.services.planner.engine import TaskChanges

pytestmark = pytest.mark.asyncio


def _touch(watchers: dict[str, list[asyncio.Future[None]]], task_id: str) -> None:
    """What the engine does when it commits a write of the task."""
    for future in watchers.pop(task_id, []):
        if not future.done():
            future.set_result(None)


async def test_a_commit_during_the_read_wakes_the_wait_at_once() -> None:
    watchers: dict[str, list[asyncio.Future[None]]] = {}
    changes = TaskChanges(watchers, "task-1")
    changes.arm()
    _touch(watchers, "task-1")  # committed while the watcher was reading
    started = time.monotonic()
    await changes.wait(30.0)
    assert time.monotonic() - started < 1.0
    changes.close()
    assert watchers == {}


async def test_a_timed_out_wait_still_listens_and_close_forgets_it() -> None:
    watchers: dict[str, list[asyncio.Future[None]]] = {}
    changes = TaskChanges(watchers, "task-1")
    changes.arm()
    await changes.wait(0.01)  # nothing committed: times out
    changes.arm()  # the same registration, not a second one
    assert len(watchers["task-1"]) == 1
    _touch(watchers, "task-1")
    started = time.monotonic()
    await changes.wait(30.0)
    assert time.monotonic() - started < 1.0
    changes.arm()
    changes.close()
    assert watchers == {}
