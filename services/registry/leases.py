"""Leases: heartbeats renew them in memory; expiries reach the database in batches, expiry is decided once.

A heartbeat costs no database write: the replica that receives it moves the instance's expiry in memory
and remembers it for the next flush, which writes every pending expiry with one statement (a narrow
``agent_leases`` table, ``UPDATE ... FROM unnest(...)`` on PostgreSQL). Expiry is judged in the database
with a grace of two flush intervals, so a renewal still waiting in some replica's batch is never mistaken
for a dead instance; the conditional DELETE that removes the lease row decides which replica announces
the expiry, so the EXPIRED event is written exactly once.
"""

from __future__ import annotations

import logging

from agentmesh.services.registry.model import InstanceRecord
from agentmesh.services.registry.store import RegistryStore, from_epoch

__all__ = ["LeaseBook"]

logger = logging.getLogger(__name__)


class LeaseBook:
    """Pending lease renewals of one replica, and the flush/sweep that persist and judge them."""

    def __init__(self, store: RegistryStore, flush_interval: float) -> None:
        self._store = store
        self.flush_interval = flush_interval
        self._pending: dict[str, float] = {}

    @property
    def grace(self) -> float:
        """Seconds past expiry before the database judges a lease dead (covers every replica's unflushed batch)."""
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
        """Expire, in the database, every lease dead for longer than :attr:`grace`; returns how many."""
        return await self._store.expire_due(from_epoch(now - self.grace), from_epoch(now))
