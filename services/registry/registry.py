"""The registry domain: the book of record of agents, tested without gRPC.

Each replica keeps the whole registry in memory (:class:`AgentIndex`), loaded from the database at start
and kept fresh by applying the change log (``registry_events``) in revision order, polled every
``registry_poll_interval``. Writes go to the database first; the writing replica then catches up to its
own revision before answering, so a caller reads its own writes and every replica applies the same
changes in the same order.

The registry is also the identity book of record: a card is accepted only from the SPIFFE id derived from
it (``spiffe://<td>/agent/<namespace>/<name>``), and the mesh's revocation set (by SPIFFE id and by
certificate serial) lives here, changed through the same log (REVOKED / UNREVOKED events). Every replica
checks calls against it (:attr:`Registry.revocations`) and streams it to the other servers (``WatchRevocations``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import ctypes
import dataclasses
import datetime as dt
import gc
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from google.protobuf import json_format
from packaging.version import Version

from agentmesh._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from agentmesh._settings import Settings
from agentmesh.security import RevocationSet, SpiffeId, agent_spiffe_id, format_serial, parse_serial
from agentmesh.services.registry._stalls import LoopStalls, Pacer, Stall, quick_handoff
from agentmesh.services.registry.discovery import AgentIndex
from agentmesh.services.registry.leases import Lapses, LeaseBook, track_loaded
from agentmesh.services.registry.model import (
    DiscoveryQuery,
    DiscoveryResult,
    InstanceRecord,
    VersionRecord,
    echo,
)
from agentmesh.services.registry.routing import CanaryRule, OutcomeWindows, RoutePolicy, rollback_reason
from agentmesh.services.registry.store import (
    CERTIFICATE_SERIAL,
    SPIFFE_ID,
    EventRow,
    RegistryStore,
    RevocationRow,
    VersionRow,
    epoch,
    from_epoch,
)
from agentmesh.services.registry.validation import parse_version, validate_card
from agentmesh.services.registry.watch import EventHub, WatchEvent
from agentmesh.v1 import agent_pb2

__all__ = ["AgentView", "Registry"]

logger = logging.getLogger(__name__)

_STATE_NAMES: dict[int, str] = {
    agent_pb2.SERVING_STATE_SERVING: "SERVING",
    agent_pb2.SERVING_STATE_DRAINING: "DRAINING",
    agent_pb2.SERVING_STATE_NOT_SERVING: "NOT_SERVING",
}
_STATE_VALUES = {name: value for value, name in _STATE_NAMES.items()}
_EVENT_BATCH = 1000
_PRUNE_EVERY = 60.0
# Change-log events about the revocation set rather than about agents: never shown to WatchAgents.
_REVOCATION_EVENTS = frozenset({"REVOKED", "UNREVOKED"})
# Change-log events that keep replicas agreeing on what ranking and rollback use: never shown to WatchAgents.
_SHARED_EVENTS = frozenset({"LOAD_CHANGED", "OUTCOME"})
# A reported load is shared (one change-log event) when it moves this far from the shared value: ranking and
# reasons use the shared value, so every replica answers alike; small jitter costs no write.
_LOAD_STEP = 0.1
_MAX_REASON = 512


def check_reason(reason: str, field: str = "reason") -> str:
    """An operator's note (a revocation's or a routing policy's reason), if it can be stored: PostgreSQL text
    cannot hold NUL, and it is kept beside every answer that shows it."""
    if len(reason) > _MAX_REASON:
        raise InvalidArgumentError(f"reason longer than {_MAX_REASON} characters", field=field)
    if "\x00" in reason:
        raise InvalidArgumentError("reason must not contain NUL characters", field=field)
    return reason


def card_hash(card: agent_pb2.AgentCard) -> str:
    """SHA-256 of the canonical card without its endpoint (an instance detail)."""
    return hashlib.sha256(card.SerializeToString(deterministic=True)).hexdigest()


def _version_record(row: VersionRow) -> VersionRecord:
    if row.card_proto is not None:
        card = agent_pb2.AgentCard.FromString(row.card_proto)
    else:
        card = json_format.ParseDict(row.card or {}, agent_pb2.AgentCard(), ignore_unknown_fields=True)
    # Stored cards were validated on registration; Version() alone skips the normal-form check.
    return VersionRecord(row.version_id, card, Version(card.version), row.card_hash, card_bytes=row.card_proto)


def _instance_record(data: dict[str, Any]) -> InstanceRecord:
    return InstanceRecord(
        instance_id=data["instance_id"],
        lease_id=data["lease_id"],
        version_id=int(data["version_id"]),
        endpoint=data["endpoint"],
        state=_STATE_VALUES[data["state"]],
        load=float(data["load"]),
        ttl=float(data["ttl"]),
        registered_by=data.get("registered_by", ""),
        registered_at=float(data["registered_at"]),
        expires_at=float(data["expires_at"]),
    )


def _index_versions(index: AgentIndex, rows: list[VersionRow]) -> None:
    """Add snapshot versions to ``index`` (not yet in use: a worker thread may do it)."""
    pace = Pacer()
    for row in rows:
        index.put_version(_version_record(row))
        pace()
    # The index is long-lived: out of the collector's generations at once, so no collection during the load
    # (nor after it) walks what is already loaded; a full collection over 100k cards holds the GIL for ~1 s.
    gc.freeze()


def _snapshot_instance(row: Mapping[str, Any]) -> InstanceRecord:
    return InstanceRecord(
        instance_id=row["instance_id"],
        lease_id=row["lease_id"],
        version_id=int(row["agent_version_id"]),
        endpoint=row["endpoint"],
        state=_STATE_VALUES[row["state"]],
        load=float(row["load"]),
        ttl=float(row["lease_ttl_seconds"]),
        registered_by=row["registered_by"],
        registered_at=epoch(row["registered_at"]),
        expires_at=epoch(row["expires_at"]),
    )


def _index_instances(index: AgentIndex, rows: list[Mapping[str, Any]], due: list[tuple[float, str]]) -> None:
    """Add snapshot instances to ``index`` and their expiries to the heap ``due`` (neither yet in use: a worker
    thread may do it)."""
    pace = Pacer()
    for row in rows:
        instance = index.put_instance(_snapshot_instance(row))
        if instance is not None:
            track_loaded(due, instance)
        pace()
    gc.freeze()


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc only): what the load parsed and dropped."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _policy(data: dict[str, Any]) -> RoutePolicy:
    updated = data.get("updated_at")
    return RoutePolicy(
        namespace=data["namespace"],
        name=data["name"],
        weights={str(k): int(v) for k, v in (data.get("weights") or {}).items()},
        canary=CanaryRule.from_json(data.get("canary")),
        reason=data.get("reason", ""),
        updated_at=from_epoch(updated)
        if isinstance(updated, int | float)
        else (updated or dt.datetime.now(dt.UTC)),
    )


@dataclasses.dataclass(frozen=True)
class AgentView:
    """One agent version, its live instances and the agent's routing policy."""

    version: VersionRecord
    instances: list[InstanceRecord]
    policy: RoutePolicy | None


class Registry:
    """Registration, leases, discovery, routing and watch of one replica."""

    def __init__(
        self, store: RegistryStore, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self.index = AgentIndex()
        self.policies: dict[str, RoutePolicy] = {}
        self.revision = 0
        self.leases = LeaseBook(store, settings.lease_flush_interval)
        self.lapses = Lapses(store)
        self.hub = EventHub()
        self._outcomes = OutcomeWindows()
        self._sync_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded = False
        self.load_seconds = 0.0  # how long the snapshot load took, and the longest event-loop stall during it
        self.load_longest_stall = 0.0
        self.load_stall = Stall()  # the longest stall, and where the loop's thread was during it
        self._healthy = False
        self._sorted_keys: list[tuple[str, str, str, str]] | None = None
        # The revocation set of the mesh: records by (subject kind, subject), and the set every call is checked
        # against (this replica's server uses it directly); watchers wait on their event for the next change.
        self.revocation_records: dict[tuple[str, str], RevocationRow] = {}
        self.revocations = RevocationSet()
        self._revocation_watchers: set[asyncio.Event] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the registry from the database and start the poll and lease loops."""
        await self._load()
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="registry-poll"),
            asyncio.create_task(self._lease_loop(), name="registry-leases"),
        ]

    async def stop(self) -> None:
        """Stop the loops and write pending lease renewals."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.leases.flush()

    async def ready(self) -> bool:
        """Readiness: loaded, and the database answered the last poll."""
        return self._loaded and self._healthy

    async def _load(self) -> None:
        # Streamed in small chunks (the loop decodes one at a time), each indexed on a worker thread that paces
        # itself: the event loop goes on answering (health says NOT_SERVING meanwhile), and one chunk of raw rows is
        # held at a time. Every step on the loop is one chunk or O(1); every step on the worker is a Python loop
        # (it hands the GIL over within quick_handoff's 0.5 ms) or a C call on one card, term or instance.
        started = time.perf_counter()
        index = AgentIndex()
        due: list[tuple[float, str]] = []

        async def take_versions(rows: list[VersionRow]) -> None:
            await asyncio.to_thread(_index_versions, index, rows)

        async def take_instances(rows: list[Mapping[str, Any]]) -> None:
            await asyncio.to_thread(_index_instances, index, rows, due)

        async with LoopStalls() as stalls:
            with quick_handoff():
                revision, policy_rows, revocation_rows, outcome_rows = await self.store.load_snapshot_in_chunks(
                    take_versions, take_instances
                )
                await asyncio.to_thread(index.prepare, Pacer())
                self.index = index
                self.lapses.reset(due)
                self.policies = {f"{p['namespace']}/{p['name']}": _policy(p) for p in policy_rows}
                self.revocation_records = {(r.subject_kind, r.subject): r for r in revocation_rows}
                self.revision = revision
                await self._recount_outcomes(outcome_rows)
                self._revocations_changed()
                self._sorted_keys = None
                self._loaded = self._healthy = True
                gc.freeze()
                await asyncio.to_thread(_release_free_memory)  # ~25 ms at 10k: not on the loop
        self.load_seconds, self.load_longest_stall = time.perf_counter() - started, stalls.longest
        self.load_stall = stalls.worst
        logger.info(
            "registry loaded %d versions, %d instances at revision %d in %.2fs "
            "(longest event-loop stall %s)",
            len(index.versions),
            len(index.instances),
            revision,
            self.load_seconds,
            stalls.worst.describe(),
        )

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_interval)
            try:
                await self.sync()
                # Look ahead two flush intervals (or polls): a lease renewed through another replica
                # is read from the database well before this replica's own record of it runs out.
                now = self._clock()
                ahead = 2 * max(self.settings.registry_poll_interval, self.leases.flush_interval)
                await self.lapses.judge(self.index, now, now + ahead)
                self._healthy = True
            except Exception:
                self._healthy = False
                logger.warning("registry change-log poll failed", exc_info=True)

    async def _lease_loop(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(self.leases.flush_interval)
            try:
                await self.leases.flush()
                now = self._clock()
                if await self.leases.sweep(now):
                    await self.sync()
                if now - last_prune > _PRUNE_EVERY:
                    last_prune = now
                    retention = dt.timedelta(hours=self.settings.registry_event_retention_hours)
                    await self.store.prune_events(from_epoch(now) - retention)
            except Exception:
                logger.warning("registry lease flush/sweep failed", exc_info=True)

    # ------------------------------------------------------------------ change log

    async def sync(self, until: int = 0) -> None:
        """Apply every change after :attr:`revision` (returns at once when already at ``until``)."""
        if until and self.revision >= until:
            return
        async with self._sync_lock:
            while not until or self.revision < until:
                rows = await self.store.events_since(self.revision, _EVENT_BATCH)
                if not rows:
                    break
                await self._apply(rows)
                if len(rows) < _EVENT_BATCH and not until:
                    break

    async def _apply(self, rows: list[EventRow]) -> None:
        needed = {
            int(row.payload["version_id"])
            for row in rows
            if row.event_type == "REGISTERED"
            and (
                (known := self.index.versions.get(int(row.payload["version_id"]))) is None
                or known.card_hash != row.payload["card_hash"]
            )
        }
        loaded = {row.version_id: row for row in await self.store.load_versions(needed)} if needed else {}
        for row in rows:
            event = self._apply_one(row, loaded)
            self.revision = row.revision
            if event is not None:
                self.hub.publish(event)

    def _apply_one(self, row: EventRow, loaded: dict[int, VersionRow]) -> WatchEvent | None:
        payload, kind = row.payload, row.event_type
        when = epoch(row.created_at)
        reason = payload.get("reason", "")
        if kind in _REVOCATION_EVENTS:
            self._apply_revocation(row)
            return None
        if kind in _SHARED_EVENTS:
            self._apply_shared(row, when)
            return None
        if kind == "REGISTERED":
            version_id = int(payload["version_id"])
            fresh = loaded.get(version_id)
            known = self.index.versions.get(version_id)
            if fresh is not None and (known is None or known.card_hash != payload["card_hash"]):
                self.index.put_version(_version_record(fresh))
            instance = self.index.put_instance(_instance_record(payload))
            self._sorted_keys = None
            if instance is None:
                return None
            self.lapses.track(instance)
            return self._instance_event(row.revision, kind, instance, reason, when)
        if kind in ("EXPIRED", "DEREGISTERED"):
            instance = self.index.remove_instance(row.instance_id)
            self.leases.forget(row.instance_id)
            self._sorted_keys = None
            record = self.index.versions.get(instance.version_id) if instance is not None else None
            if instance is None or record is None:
                return None
            return WatchEvent(row.revision, kind, record.namespace, instance, record, None, reason, when)
        if kind == "STATE_CHANGED":
            instance = self.index.set_state(row.instance_id, _STATE_VALUES[payload["state"]])
            if instance is None:
                return None
            return self._instance_event(row.revision, kind, instance, reason, when)
        if kind == "ROUTING_CHANGED":
            policy = _policy(payload)
            key = f"{policy.namespace}/{policy.name}"
            self.policies[key] = policy
            for version in self._outcome_keys(policy):
                self._outcomes.reset(version)
            return WatchEvent(row.revision, kind, policy.namespace, None, None, policy, policy.reason, when)
        logger.warning("unknown registry event %s at revision %d", kind, row.revision)
        return None

    def _apply_shared(self, row: EventRow, when: float) -> None:
        if row.event_type == "LOAD_CHANGED":
            instance = self.index.instances.get(row.instance_id)
            if instance is not None:
                self.index.set_load(instance, float(row.payload["load"]))
            return
        self._count_outcome(self._outcomes, row, when)

    def _count_outcome(self, outcomes: OutcomeWindows, row: EventRow, when: float) -> None:
        policy = self.policies.get(f"{row.namespace}/{row.name}")
        if policy is not None and policy.canary is not None:
            key = (row.namespace, row.name, str(row.payload["version"]))
            outcomes.record(key, bool(row.payload["success"]), policy.canary.window, at=when)

    async def _recount_outcomes(self, rows: list[EventRow]) -> None:
        """Canary outcome counts as the replicas that were up have them: the recent OUTCOME events replayed, each
        routing change in between resetting its agent's counts as it did on them (so a replica that starts after
        outcomes were reported makes the same rollback decision as its peers)."""
        outcomes = OutcomeWindows()
        for position, row in enumerate(rows):
            if row.event_type == "ROUTING_CHANGED":
                for key in self._outcome_keys(_policy(row.payload)):
                    outcomes.reset(key)
            else:
                self._count_outcome(outcomes, row, epoch(row.created_at))
            if position % 1000 == 999:
                await asyncio.sleep(0)  # a busy canary's window can hold many: the loop keeps its turns
        self._outcomes = outcomes

    @staticmethod
    def _outcome_keys(policy: RoutePolicy) -> list[tuple[str, str, str]]:
        return [(policy.namespace, policy.name, version) for version in policy.weights]

    def _instance_event(
        self, revision: int, kind: str, instance: InstanceRecord, reason: str, when: float
    ) -> WatchEvent:
        record = self.index.versions[instance.version_id]
        snapshot = dataclasses.replace(instance)
        return WatchEvent(revision, kind, record.namespace, snapshot, record, None, reason, when)

    # ------------------------------------------------------------------ registration and leases

    def _ttl(self, requested: float) -> float:
        """The TTL granted for ``requested`` (0: the default), clamped to the bounds; the lease reports it."""
        if requested < 0:
            raise InvalidArgumentError(f"lease_ttl must not be negative, not {requested:g}s", field="lease_ttl")
        ttl = requested if requested > 0 else self.settings.lease_ttl
        shortest = max(self.settings.lease_ttl_min, self.leases.min_ttl)
        return min(max(ttl, shortest), self.settings.lease_ttl_max)

    async def register(
        self, card: agent_pb2.AgentCard, lease_ttl: float, caller: str | None, caller_serial: int | None = None
    ) -> InstanceRecord:
        """Register one instance of ``card``; ``caller`` is the verified SPIFFE id (``None`` under insecure dev).

        The registry is the identity book of record: an agent's identity is derived from its card
        (``spiffe://<td>/agent/<namespace>/<name>``), and only that identity may register any version or
        instance of it. ``caller_serial`` (the serial of the caller's certificate) is kept with the instance
        so that revoking that certificate removes it.
        """
        validate_card(card)
        expected = agent_spiffe_id(self.settings.trust_domain, card.namespace, card.name)
        if caller is not None and caller != expected:
            raise PermissionDeniedError(
                f"caller {caller} may not register agent {card.namespace}/{card.name}: only {expected} may "
                "(an agent's identity is derived from its card's namespace and name)",
                metadata={"identity": caller, "expected": expected},
            )
        if card.spiffe_id != expected:
            raise InvalidArgumentError(
                f"card.spiffe_id must be {expected}, the identity derived from the card's namespace and name",
                field="card.spiffe_id",
            )
        stored = copy.deepcopy(card)
        stored.ClearField("endpoint")
        digest = card_hash(stored)
        ttl = self._ttl(lease_ttl)
        payload, revision = await self.store.register(
            card=json_format.MessageToDict(stored, preserving_proto_field_name=True),
            card_hash=digest,
            card_proto=stored.SerializeToString(deterministic=True),
            endpoint=card.endpoint,
            instance_id=uuid.uuid4().hex,
            lease_id=uuid.uuid4().hex,
            ttl=ttl,
            registered_by=caller or card.spiffe_id,
            registered_serial=format_serial(caller_serial) if caller_serial else "",
            now=from_epoch(self._clock()),
        )
        await self.sync(revision)
        instance = self.index.instances.get(payload["instance_id"])
        if instance is None:  # expired or deregistered between commit and catch-up
            raise UnavailableError("the instance vanished right after registration; register again")
        return instance

    def _owned(self, lease_id: str, caller: str | None) -> InstanceRecord | None:
        instance_id = self.index.by_lease.get(lease_id)
        if instance_id is None:
            return None
        instance = self.index.instances[instance_id]
        if caller is not None and caller != instance.registered_by:
            raise PermissionDeniedError(
                f"caller {caller!r} does not hold this lease (held by {instance.registered_by!r})",
                metadata={"identity": caller, "expected": instance.registered_by},
            )
        return instance

    async def _find_lease(self, lease_id: str, caller: str | None) -> InstanceRecord:
        instance = self._owned(lease_id, caller)
        if instance is None:
            await self.sync()  # registered through another replica a moment ago?
            instance = self._owned(lease_id, caller)
        if instance is None:
            raise NotFoundError(
                f"lease {echo(lease_id)} is unknown or expired; register again", metadata={"lease_id": lease_id[:64]}
            )
        return instance

    async def heartbeat(self, lease_id: str, state: int, load: float, caller: str | None) -> InstanceRecord:
        """Renew a lease in memory (flushed in batches) and record state and load."""
        if not 0.0 <= load <= 1.0:
            raise InvalidArgumentError(f"load {load} must be within [0, 1]", field="load")
        if state not in (agent_pb2.SERVING_STATE_UNSPECIFIED, *_STATE_NAMES):
            raise InvalidArgumentError(f"unknown serving state {state}", field="state")
        instance = self._owned(lease_id, caller) or await self._find_lease(lease_id, caller)
        self.leases.renew(instance, self._clock())
        self.lapses.revive(self.index, instance)
        if abs(load - instance.load) >= _LOAD_STEP:
            record = self.index.versions[instance.version_id]
            revision = await self.store.set_load(
                instance.instance_id, record.namespace, record.name, round(load, 2), from_epoch(self._clock())
            )
            if revision is None:
                raise NotFoundError(f"lease {lease_id!r} expired; register again", metadata={"lease_id": lease_id})
            await self.sync(revision)
        if state != agent_pb2.SERVING_STATE_UNSPECIFIED and state != instance.state:
            record = self.index.versions[instance.version_id]
            revision = await self.store.set_state(
                instance.instance_id,
                record.namespace,
                record.name,
                _STATE_NAMES[state],
                from_epoch(self._clock()),
            )
            if revision is None:
                raise NotFoundError(
                    f"lease {lease_id!r} expired; register again", metadata={"lease_id": lease_id}
                )
            await self.sync(revision)
        return instance

    async def deregister(self, lease_id: str, caller: str | None) -> None:
        """Remove an instance at once."""
        instance = await self._find_lease(lease_id, caller)
        record = self.index.versions[instance.version_id]
        revision = await self.store.deregister(
            instance.instance_id,
            record.namespace,
            record.name,
            from_epoch(self._clock()),
            "deregistered",
        )
        self.leases.forget(instance.instance_id)
        await self.sync(revision or 0)

    # ------------------------------------------------------------------ reads

    def get_agent(self, namespace: str, name: str, version: str = "") -> AgentView:
        """One version of ``namespace/name`` (the highest live one when ``version`` is empty)."""
        records = self.index.version_records(namespace, name)
        if not records:
            raise NotFoundError(  # quoted and cut: the caller's own input, NUL bytes and megabytes included
                f"agent {echo(f'{namespace}/{name}')} is not registered",
                metadata={"agent": f"{namespace}/{name}"[:256]},
            )
        if version:
            parse_version(version, "version")
            chosen = next((r for r in records if r.version == version), None)
            if chosen is None:
                raise NotFoundError(
                    f"agent {namespace}/{name} has no version {version}",
                    metadata={"agent": f"{namespace}/{name}", "version": version},
                )
        else:
            live = [r for r in records if r.instances]
            chosen = (live or records)[-1]
        now = self._clock()  # exact expiry: a lease that passed is not shown, swept or not
        instances = sorted((i for i in chosen.instances.values() if i.expires_at > now), key=lambda i: i.endpoint)
        return AgentView(chosen, instances, self.policies.get(f"{namespace}/{name}"))

    def _ordered_keys(self) -> list[tuple[str, str, str, str]]:
        if self._sorted_keys is None:
            keys = []
            for instance, record in self.index.iter_instances():
                keys.append((record.namespace, record.name, record.version, instance.instance_id))
            keys.sort()
            self._sorted_keys = keys
        return self._sorted_keys

    def list_agents(
        self,
        *,
        page_size: int,
        after: tuple[str, str, str, str] | None,
        namespace: str,
        name_prefix: str,
        include_not_serving: bool,
    ) -> tuple[list[tuple[InstanceRecord, VersionRecord]], tuple[str, str, str, str] | None]:
        """A page of instances ordered by namespace, name, version, instance; and the key to continue after."""
        keys = self._ordered_keys()
        now = self._clock()
        start = bisect.bisect_right(keys, after) if after else 0
        if namespace and (after is None or after[0] < namespace):
            start = max(start, bisect.bisect_left(keys, (namespace, name_prefix, "", "")))
        page: list[tuple[InstanceRecord, VersionRecord]] = []
        last: tuple[str, str, str, str] | None = None
        for position in range(start, len(keys)):
            key = keys[position]
            if namespace and key[0] != namespace:
                if key[0] > namespace:
                    break
                continue
            if name_prefix and not key[1].startswith(name_prefix):
                if namespace and key[1] > name_prefix:
                    break
                continue
            instance = self.index.instances.get(key[3])
            if instance is None or instance.expires_at <= now or (
                not include_not_serving and instance.state != agent_pb2.SERVING_STATE_SERVING
            ):
                continue
            if len(page) == page_size:
                return page, last
            page.append((instance, self.index.versions[instance.version_id]))
            last = key
        return page, None

    def discover(self, query: DiscoveryQuery) -> DiscoveryResult:
        """Which live agents should do this, best first, with reasons."""
        result = self.index.discover(query, self.policies)
        now = self._clock()  # exact expiry: leases that passed since the last poll hid them are left out
        if any(c.instance.expires_at <= now for c in result.candidates):
            live = [c for c in result.candidates if c.instance.expires_at > now]
            result = dataclasses.replace(result, candidates=live)
        return result

    # ------------------------------------------------------------------ routing

    def get_routing(self, namespace: str, name: str) -> RoutePolicy:
        """The routing policy of ``namespace/name``."""
        policy = self.policies.get(f"{namespace}/{name}")
        if policy is None:
            raise NotFoundError(
                f"agent {namespace}/{name} has no routing policy", metadata={"agent": f"{namespace}/{name}"}
            )
        return policy

    async def set_routing(
        self,
        namespace: str,
        name: str,
        weights: dict[str, int],
        canary: CanaryRule | None,
        reason: str,
        caller: str | None,
    ) -> RoutePolicy:
        """Replace the version weights (and canary rule) of ``namespace/name``."""
        values = {
            "weights": weights,
            "canary": canary.to_json() if canary else {},
            "reason": reason,
            "updated_by": caller or "",
        }
        revision = await self.store.set_routing(namespace, name, values, from_epoch(self._clock()))
        await self.sync(revision)
        return self.policies[f"{namespace}/{name}"]

    async def report_outcome(self, namespace: str, name: str, version: str, success: bool) -> bool:
        """Count one call outcome; returns True when it rolled a canary back."""
        policy = self.policies.get(f"{namespace}/{name}")
        if policy is None or policy.canary is None or version not in policy.canaries():
            return False
        key = (namespace, name, version)
        # Through the change log, so every replica counts it: min_requests counts the reports to all of them.
        await self.sync(
            await self.store.record_outcome(namespace, name, version, success, from_epoch(self._clock()))
        )
        failures, total = self._outcomes.counts(key, policy.canary.window)
        reason = rollback_reason(policy, version, failures, total)
        if reason is None:
            return False
        logger.warning("%s/%s: %s", namespace, name, reason)
        rolled_back = await self.store.rollback_version(namespace, name, version, reason, from_epoch(self._clock()))
        self._outcomes.reset(key)
        if rolled_back is None:
            return False  # another replica rolled it back first
        await self.sync(rolled_back)
        return True

    # ------------------------------------------------------------------ watch

    async def watch(self, since_revision: int, namespace: str) -> AsyncIterator[WatchEvent]:
        """A snapshot (when ``since_revision`` is 0) or the changes after it, then every change as it happens."""
        subscription = self.hub.subscribe()
        try:
            if since_revision <= 0:
                revision = self.revision
                snapshot = [
                    WatchEvent(
                        revision, "SNAPSHOT", record.namespace, dataclasses.replace(instance), record
                    )
                    for instance, record in self.index.iter_instances()
                    if not namespace or record.namespace == namespace
                ]
                snapshot += [
                    WatchEvent(revision, "ROUTING_CHANGED", p.namespace, policy=p, reason=p.reason)
                    for p in self.policies.values()
                    if not namespace or p.namespace == namespace
                ]
                for event in snapshot:
                    yield event
                yield WatchEvent(revision, "SNAPSHOT_END", namespace, event_time=self._clock())
                last = revision
            else:
                oldest = await self.store.oldest_revision()
                if oldest and since_revision < oldest - 1:
                    raise FailedPreconditionError(
                        f"revision {since_revision} is no longer in the change log (oldest {oldest}); "
                        "watch again with since_revision=0 for a fresh snapshot"
                    )
                last = since_revision
                while last < self.revision:
                    rows = await self.store.events_since(last, _EVENT_BATCH)
                    for row in rows:
                        if row.revision > self.revision:
                            break
                        last = row.revision
                        if row.event_type in _REVOCATION_EVENTS or row.event_type in _SHARED_EVENTS:
                            continue
                        event = self._replayed(row)
                        if not namespace or event.namespace == namespace:
                            yield event
                    if not rows:
                        break
            while True:
                event = await subscription.get()
                if event.revision <= last:
                    continue
                last = event.revision
                if not namespace or event.namespace == namespace:
                    yield event
        finally:
            self.hub.unsubscribe(subscription)

    def _replayed(self, row: EventRow) -> WatchEvent:
        """A past change read back from the log, described with what this replica still knows."""
        when = epoch(row.created_at)
        reason = row.payload.get("reason", "")
        if row.event_type == "ROUTING_CHANGED":
            policy = _policy(row.payload)
            return WatchEvent(
                row.revision,
                row.event_type,
                row.namespace,
                policy=policy,
                reason=policy.reason,
                event_time=when,
            )
        instance = self.index.instances.get(row.instance_id)
        if instance is None and row.event_type == "REGISTERED":
            instance = _instance_record(row.payload)
        record = self.index.versions.get(instance.version_id) if instance is not None else None
        if record is None:
            # The version is gone from memory: describe the instance by name only.
            card = agent_pb2.AgentCard(namespace=row.namespace, name=row.name)
            record = VersionRecord(0, card, parse_version("0"), "")
        if instance is None:
            instance = InstanceRecord(
                row.instance_id,
                "",
                record.version_id,
                "",
                agent_pb2.SERVING_STATE_NOT_SERVING,
                0.0,
                0.0,
                "",
                when,
                when,
            )
        return WatchEvent(
            row.revision,
            row.event_type,
            row.namespace,
            dataclasses.replace(instance),
            record,
            None,
            reason,
            when,
        )

    # ------------------------------------------------------------------ revocation

    def _apply_revocation(self, row: EventRow) -> None:
        revocation = RevocationRow.from_payload(row.payload)
        subject = (revocation.subject_kind, revocation.subject)
        if row.event_type == "REVOKED":
            self.revocation_records[subject] = revocation
        else:
            self.revocation_records.pop(subject, None)
        self.revision = row.revision
        self._revocations_changed()

    def _revocations_changed(self) -> None:
        ids = [r.subject for r in self.revocation_records.values() if r.subject_kind == SPIFFE_ID]
        serials = [int(r.subject, 16) for r in self.revocation_records.values() if r.subject_kind == CERTIFICATE_SERIAL]
        self.revocations.replace(ids, serials, self.revision)
        for watcher in self._revocation_watchers:
            watcher.set()

    def _subject(self, spiffe_id: str, certificate_serial: str) -> tuple[str, str]:
        """``(subject kind, canonical subject)`` of a request naming exactly one of the two."""
        if bool(spiffe_id) == bool(certificate_serial):
            raise InvalidArgumentError("name exactly one of spiffe_id and certificate_serial", field="subject")
        if certificate_serial:
            return CERTIFICATE_SERIAL, format_serial(parse_serial(certificate_serial))
        try:
            identity = SpiffeId.parse(spiffe_id, self.settings.trust_domain)
        except MeshError as exc:
            raise InvalidArgumentError(exc.message, field="spiffe_id") from None
        return SPIFFE_ID, identity.uri

    async def revoke(
        self, spiffe_id: str, certificate_serial: str, reason: str, caller: str | None
    ) -> tuple[RevocationRow, int]:
        """Revoke an identity or one certificate: its instances leave at once; returns it and how many left."""
        kind, subject = self._subject(spiffe_id, certificate_serial)
        check_reason(reason)
        if kind == SPIFFE_ID and caller is not None and subject == caller:
            raise FailedPreconditionError(f"{caller} may not revoke itself (it would lock itself out)")
        record, removed, revision = await self.store.revoke(
            kind, subject, reason, caller or "", from_epoch(self._clock())
        )
        if revision is not None:
            logger.warning("revoked %s (%s): %d instance(s) removed", subject, reason or "no reason given", removed)
            await self.sync(revision)
        return record, removed

    async def unrevoke(self, spiffe_id: str, certificate_serial: str, caller: str | None = None) -> RevocationRow:
        """Lift a revocation; returns it as it was."""
        kind, subject = self._subject(spiffe_id, certificate_serial)
        record, revision = await self.store.unrevoke(kind, subject, from_epoch(self._clock()), caller or "")
        logger.warning("unrevoked %s", subject)
        await self.sync(revision)
        return record

    def list_revocations(self) -> list[RevocationRow]:
        """Every revocation in force: SPIFFE ids first, then serials, each sorted."""
        return sorted(self.revocation_records.values(), key=lambda r: (r.subject_kind != SPIFFE_ID, r.subject))

    async def watch_revocations(self) -> AsyncIterator[tuple[int, list[RevocationRow]]]:
        """``(revision, revocations)`` now, and again after every change (bursts coalesce into one)."""
        changed = asyncio.Event()
        self._revocation_watchers.add(changed)
        try:
            while True:
                changed.clear()
                yield self.revision, self.list_revocations()
                await changed.wait()
        finally:
            self._revocation_watchers.discard(changed)
