"""Leases: heartbeats renew them in memory; expiries reach the database in batches, expiry is decided once.

A heartbeat costs no database write: the replica that receives it moves the instance's expiry in memory
and remembers it for the next flush, which writes every pending expiry with one statement (a narrow
``agent_leases`` table, ``UPDATE ... FROM unnest(...)`` on PostgreSQL). The conditional DELETE that
removes the lease row decides which replica announces the expiry, so the EXPIRED event is written exactly
once.

Expiry is exact. Answers never include an instance past its ``expires_at`` (filtered at query time), and
every poll each replica hides instances whose lease has passed as far as it and the database know
(:class:`Lapses`: an instance heartbeating through another replica is looked up in ``agent_leases`` before
it is hidden). The sweep expires leases as soon as their stored expiry has passed. Both are safe because a
granted TTL is at least :attr:`LeaseBook.min_ttl` (two flush intervals): an agent renewing every third of
its TTL always has a renewal in the database that reaches beyond the next flush.

There is no grace period. The SDK renews every third of the TTL, so an agent whose renewals stop for a whole
TTL (a heartbeat more than ~2/3 of the TTL late: a process paused by a long GC, a frozen VM, a partition) leaves
discovery at the exact expiry, although it may still be alive; the next sweep (within one flush interval) writes
the EXPIRED event. A renewal that arrives after the expiry but before that sweep revives the same lease (the
instance is shown again); after the sweep the heartbeat is answered NOT_FOUND and the SDK registers the agent
again at once (a new instance id: one EXPIRED and one REGISTERED event). Where pauses that long are expected,
raise the TTL (``AGENTMESH_LEASE_TTL``, or ``lease_ttl`` at registration): the tolerated pause is 2/3 of it.
"""

from __future__ import annotations

import heapq
import logging

from agentmesh.services.registry.discovery import AgentIndex
from agentmesh.services.registry.model import InstanceRecord
from agentmesh.services.registry.store import RegistryStore, epoch, from_epoch
from agentmesh.v1 import agent_pb2

__all__ = ["Lapses", "LeaseBook", "track_loaded"]

NOT_SERVING = agent_pb2.SERVING_STATE_NOT_SERVING

logger = logging.getLogger(__name__)


class LeaseBook:
    """Pending lease renewals of one replica, and the flush/sweep that persist and judge them."""

    def __init__(self, store: RegistryStore, flush_interval: float) -> None:
        self._store = store
        self.flush_interval = flush_interval
        self._pending: dict[str, float] = {}

    @property
    def min_ttl(self) -> float:
        """The shortest TTL granted: two flush intervals, so a live lease's stored expiry is never overtaken."""
        return 2 * self.flush_interval

    @property
    def pending(self) -> int:
        """Renewals not yet written."""
        return len(self._pending)

    def renew(self, instance: InstanceRecord, now: float) -> float:
        """Extend ``instance``'s lease by its TTL from ``now``; returns the new expiry (epoch seconds)."""
        instance.expires_at = now + instance.ttl
        self._pending[instance.instance_id] = instance.expires_at
        return instance.expires_at

    def forget(self, instance_id: str) -> None:
        """Drop a pending renewal of an instance that is gone."""
        self._pending.pop(instance_id, None)

    async def flush(self) -> int:
        """Write every pending expiry with one statement; returns how many were written."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            await self._store.flush_leases({key: from_epoch(value) for key, value in batch.items()})
        except Exception:
            # Keep them for the next flush; newer renewals taken meanwhile win.
            for key, value in batch.items():
                self._pending[key] = max(value, self._pending.get(key, value))
            raise
        return len(batch)

    async def sweep(self, now: float) -> int:
        """Expire, in the database, every lease whose stored expiry has passed; returns how many."""
        return await self._store.expire_due(from_epoch(now), from_epoch(now))


def track_loaded(due: list[tuple[float, str]], instance: InstanceRecord) -> None:
    """Add a loaded instance to ``due``, the heap :meth:`Lapses.reset` takes."""
    heapq.heappush(due, (instance.expires_at, instance.instance_id))


class Lapses:
    """Instances whose lease passed, hidden from answers (as NOT_SERVING) until renewed or swept.

    A heap of (expiry, instance id) finds the instances due without scanning them all: each instance has an
    entry (added by :meth:`track`); an entry that comes due for an instance renewed since is pushed back with
    the instance's current expiry, so renewals cost nothing here.
    """

    def __init__(self, store: RegistryStore) -> None:
        self._store = store
        self._hidden: dict[str, int] = {}  # instance id -> the state it had when its lease passed
        self._due: list[tuple[float, str]] = []

    def reset(self, due: list[tuple[float, str]]) -> None:
        """Track the instances of a freshly loaded index (and nothing else): ``due`` is a heap of (expiry, instance
        id) built with :func:`track_loaded` as the index was loaded (heapifying 100k entries at once would hold the
        event loop for tens of ms)."""
        self._hidden.clear()
        self._due = due

    def track(self, instance: InstanceRecord) -> None:
        """Judge ``instance`` when its lease comes due (call when an instance joins the index)."""
        heapq.heappush(self._due, (instance.expires_at, instance.instance_id))

    def revive(self, index: AgentIndex, instance: InstanceRecord) -> None:
        """Show a hidden instance again (its lease was renewed)."""
        state = self._hidden.pop(instance.instance_id, None)
        if state is not None:
            index.set_state(instance.instance_id, state)

    async def judge(self, index: AgentIndex, now: float, horizon: float) -> int:
        """Hide every instance whose lease passes before ``horizon`` unless the database knows a later expiry.

        Returns how many are hidden. Instances renewed meanwhile (locally or through another replica) are
        shown again.
        """
        due: dict[str, InstanceRecord] = {}
        while self._due and self._due[0][0] <= horizon:
            _, instance_id = heapq.heappop(self._due)
            instance = index.instances.get(instance_id)
            if instance is None:  # expired or deregistered meanwhile
                self._hidden.pop(instance_id, None)
                continue
            if instance_id in due:  # a second entry (registered again)
                continue
            if instance.expires_at > horizon:  # renewed here since: come back at the new expiry
                heapq.heappush(self._due, (instance.expires_at, instance_id))
                continue
            due[instance_id] = instance
        if not due:
            return len(self._hidden)
        stored = await self._store.lease_expiries(list(due))
        for instance_id, instance in due.items():
            if index.instances.get(instance_id) is not instance:
                continue  # removed (or registered again, tracked anew) while the database answered
            expiry = stored.get(instance_id)
            if expiry is not None:
                instance.expires_at = max(instance.expires_at, epoch(expiry))
            if instance.expires_at > now:
                self.revive(index, instance)
                heapq.heappush(self._due, (instance.expires_at, instance_id))
                continue
            if instance.state != NOT_SERVING:
                self._hidden[instance_id] = instance.state
                index.set_state(instance_id, NOT_SERVING)
            # Look again next poll: renewed late through some replica, or swept and removed.
            heapq.heappush(self._due, (now, instance_id))
        return len(self._hidden)
