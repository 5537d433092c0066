"""Fan-out of registry changes to ``WatchAgents`` streams of one replica."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agentmesh._errors import AbortedError
from agentmesh.services.registry.model import InstanceRecord, VersionRecord
from agentmesh.services.registry.routing import RoutePolicy

__all__ = ["EventHub", "Subscription", "WatchEvent"]

# A watcher further behind than this is cut off and told to resume from its last revision.
MAX_BACKLOG = 10_000


@dataclass(frozen=True)
class WatchEvent:
    """One change (or snapshot entry) as a watcher sees it."""

    revision: int
    event_type: str  # AgentEventType name without prefix: SNAPSHOT, REGISTERED, EXPIRED, ...
    namespace: str = ""
    instance: InstanceRecord | None = None
    version: VersionRecord | None = None
    policy: RoutePolicy | None = None
    reason: str = ""
    event_time: float = 0.0  # epoch seconds


class Subscription:
    """The queue of one watcher."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[WatchEvent] = asyncio.Queue(MAX_BACKLOG)
        self.overflowed = False

    async def get(self) -> WatchEvent:
        """The next change; AbortedError when this watcher fell too far behind."""
        if self.overflowed and self.queue.empty():
            raise AbortedError(
                "the watch fell too far behind; resume with since_revision set to the last revision seen"
            )
        return await self.queue.get()


class EventHub:
    """Publishes each applied change to every subscription."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        """A new subscription; pair with :meth:`unsubscribe`."""
        subscription = Subscription()
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``."""
        self._subscriptions.discard(subscription)

    def publish(self, event: WatchEvent) -> None:
        """Deliver ``event`` to every subscription without waiting."""
        for subscription in self._subscriptions:
            if subscription.overflowed:
                continue
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                subscription.overflowed = True
