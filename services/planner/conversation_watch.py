"""Waking WatchConversation streams: at once for writes made in this process, by one shared poll for others.

Every watcher of a conversation waits on the same event. A write through this process sets it directly; writes
through other planner replicas are found by a single background poll per process that reads the versions of
every watched conversation in one query (chunked), however many streams watch them, and wakes the ones that
moved. A watcher takes its event *before* reading the changes, so no write can slip between read and wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from agentmesh._errors import MeshError
from agentmesh.services.planner.conversations_store import ConversationStore

__all__ = ["ChangeSignal"]

logger = logging.getLogger(__name__)


class ChangeSignal:
    """Per-conversation wake-ups for the watchers in this process."""

    def __init__(self, store: ConversationStore, poll_interval: float) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._events: dict[str, asyncio.Event] = {}
        self._watchers: Counter[str] = Counter()
        self._seen: dict[str, int] = {}
        self._poller: asyncio.Task[None] | None = None

    def subscribe(self, conversation_id: str, version: int) -> None:
        """A watcher of ``conversation_id`` starts (it has read up to ``version``)."""
        self._watchers[conversation_id] += 1
        self._seen.setdefault(conversation_id, version)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="conversation-watch-poll")

    def unsubscribe(self, conversation_id: str) -> None:
        """A watcher of ``conversation_id`` ends."""
        self._watchers[conversation_id] -= 1
        if self._watchers[conversation_id] <= 0:
            del self._watchers[conversation_id]
            self._seen.pop(conversation_id, None)
            self._events.pop(conversation_id, None)

    def waiter(self, conversation_id: str) -> asyncio.Event:
        """The event the next change of ``conversation_id`` sets (take it before reading the changes)."""
        return self._events.setdefault(conversation_id, asyncio.Event())

    def notify(self, conversation_id: str) -> None:
        """``conversation_id`` changed: wake its watchers."""
        event = self._events.pop(conversation_id, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        """Wake every watcher (the server is stopping)."""
        for conversation_id in list(self._events):
            self.notify(conversation_id)

    async def _poll(self) -> None:
        while self._watchers:
            await asyncio.sleep(self._poll_interval)
            try:
                versions = await self._store.versions(list(self._watchers))
            except MeshError as exc:  # the database is away; watchers keep waiting, the next round retries
                logger.warning("conversation watches cannot poll: %s", exc.message)
                continue
            for conversation_id, version in versions.items():
                if conversation_id in self._seen and version != self._seen[conversation_id]:
                    self._seen[conversation_id] = version
                    self.notify(conversation_id)

    async def close(self) -> None:
        """Wake every watcher and stop polling."""
        self.notify_all()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
