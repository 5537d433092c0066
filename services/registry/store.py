"""The registry's SQL: one transaction per state transition, every change appended to ``registry_events``.

Writers that append events take one lock (``pg_advisory_xact_lock`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already serialises writers), so revisions commit in order and a replica that polls
``revision > last`` never skips a change that commits late. Heartbeats do not come here one by one: a
replica flushes many lease expiries with one statement (:meth:`RegistryStore.flush_leases`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmesh._errors import AlreadyExistsError, NotFoundError, PermissionDeniedError
from agentmesh.audit import AuditEntry, append_audit
from agentmesh.storage import (
    Agent,
    AgentInstance,
    AgentLease,
    AgentSkill,
    AgentVersion,
    PolicyBit,
    RegistryEvent,
    Revocation,
    RoutingPolicy,
)

__all__ = ["CERTIFICATE_SERIAL", "SPIFFE_ID", "EventRow", "RegistryStore", "RevocationRow", "epoch", "from_epoch"]

agents = Agent.__table__
versions = AgentVersion.__table__
skills = AgentSkill.__table__
instances = AgentInstance.__table__
leases = AgentLease.__table__
policies_table = RoutingPolicy.__table__
events = RegistryEvent.__table__
policy_bits = PolicyBit.__table__
revocations = Revocation.__table__

# revocations.subject_kind values.
SPIFFE_ID = "SPIFFE_ID"
CERTIFICATE_SERIAL = "CERTIFICATE_SERIAL"

# Arbitrary constant naming the registry writers' advisory lock ("agents" in ASCII).
_WRITER_LOCK = 0x6167656E7473
# policy_bits: bits 0..62 (63 stays clear so masks fit a signed BIGINT).
_MAX_POLICY_BIT = 62
_CHUNK = 1000
# Rows of the snapshot streamed at a time: a replica holds one chunk of raw rows, not the whole table.
_SNAPSHOT_CHUNK = 250


def epoch(moment: dt.datetime) -> float:
    """Seconds since the epoch of an aware datetime."""
    return moment.timestamp()


def from_epoch(seconds: float) -> dt.datetime:
    """An aware UTC datetime from epoch seconds."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@dataclass(frozen=True)
class EventRow:
    """One row of the change log."""

    revision: int
    event_type: str
    namespace: str
    name: str
    instance_id: str
    payload: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class VersionRow:
    """A stored card version."""

    version_id: int
    card: dict[str, Any] | None  # JSON form; only loaded when card_proto is missing (rows older than 0002)
    card_hash: str
    card_proto: bytes | None


@dataclass(frozen=True)
class RevocationRow:
    """One revocation in force: ``subject`` is a SPIFFE id or a certificate serial (lowercase hex)."""

    subject_kind: str  # SPIFFE_ID or CERTIFICATE_SERIAL
    subject: str
    reason: str
    revoked_by: str
    created_at: float  # epoch seconds

    def payload(self) -> dict[str, Any]:
        """The JSON form kept in REVOKED / UNREVOKED events."""
        return {
            "subject_kind": self.subject_kind,
            "subject": self.subject,
            "reason": self.reason,
            "revoked_by": self.revoked_by,
            "created_at": self.created_at,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RevocationRow:
        """Read back :meth:`payload`."""
        return cls(
            payload["subject_kind"],
            payload["subject"],
            payload.get("reason", ""),
            payload.get("revoked_by", ""),
            float(payload.get("created_at", 0.0)),
        )


def _revocation_row(row: Any) -> RevocationRow:
    return RevocationRow(row.subject_kind, row.subject, row.reason, row.revoked_by, epoch(row.created_at))


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RegistryStore:
    """Every SQL statement of the registry."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads: on SQLite its transactions begin DEFERRED, so reads never take the write lock."""
        async with self.engine.connect() as conn:
            yield await conn.execution_options(sqlite_begin="DEFERRED")

    @asynccontextmanager
    async def _writer(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            if self.is_postgres:
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITER_LOCK})
            yield conn

    @staticmethod
    async def _append(
        conn: AsyncConnection,
        event_type: str,
        namespace: str,
        name: str,
        instance_id: str,
        payload: dict[str, Any],
        now: dt.datetime,
    ) -> int:
        revision = await conn.scalar(
            sa.insert(events)
            .values(
                event_type=event_type,
                namespace=namespace,
                name=name,
                instance_id=instance_id,
                payload=payload,
                created_at=now,
            )
            .returning(events.c.revision)
        )
        return int(revision)

    async def _policy_mask(self, conn: AsyncConnection, policies: Sequence[str]) -> int:
        """The bitmask of ``policies`` (bits assigned once in ``policy_bits``; bits beyond 62 are left out)."""
        if not policies:
            return 0
        rows = await conn.execute(
            sa.select(policy_bits.c.policy, policy_bits.c.bit).where(policy_bits.c.policy.in_(policies))
        )
        bits = {row.policy: row.bit for row in rows}
        missing = [p for p in policies if p not in bits]
        if missing:
            highest = await conn.scalar(sa.select(sa.func.max(policy_bits.c.bit)))
            next_bit = -1 if highest is None else int(highest)
            for policy in missing:
                if next_bit >= _MAX_POLICY_BIT:
                    break
                next_bit += 1
                await conn.execute(sa.insert(policy_bits).values(policy=policy, bit=next_bit))
                bits[policy] = next_bit
        return sum(1 << bit for bit in bits.values())

    async def _write_version(
        self,
        conn: AsyncConnection,
        version_id: int | None,
        agent_id: int,
        card: dict[str, Any],
        card_hash: str,
        card_proto: bytes,
        now: dt.datetime,
    ) -> int:
        mask = await self._policy_mask(conn, card.get("policies", []))
        values = {
            "agent_id": agent_id,
            "version": card["version"],
            "purpose": card.get("purpose", ""),
            "description": card.get("description", ""),
            "policies": card.get("policies", []),
            "policy_mask": mask,
            "labels": card.get("labels", {}),
            "owner": card.get("owner", ""),
            "spiffe_id": card.get("spiffe_id", ""),
            "card": card,
            "card_hash": card_hash,
            "card_proto": card_proto,
        }
        if version_id is None:
            version_id = int(
                await conn.scalar(
                    sa.insert(versions).values(**values, created_at=now).returning(versions.c.id)
                )
            )
        else:
            await conn.execute(sa.update(versions).where(versions.c.id == version_id).values(**values))
            await conn.execute(sa.delete(skills).where(skills.c.agent_version_id == version_id))
        skill_rows = [
            {
                "agent_version_id": version_id,
                "skill_name": skill["name"],
                "description": skill.get("description", ""),
                "input_schema": skill.get("input_schema", {}),
                "output_schema": skill.get("output_schema", {}),
                "tags": skill.get("tags", []),
            }
            for skill in card.get("skills", [])
        ]
        if skill_rows:
            await conn.execute(sa.insert(skills), skill_rows)
        return version_id

    async def register(
        self,
        *,
        card: dict[str, Any],
        card_hash: str,
        card_proto: bytes,
        endpoint: str,
        instance_id: str,
        lease_id: str,
        ttl: float,
        registered_by: str,
        registered_serial: str = "",
        now: dt.datetime,
    ) -> tuple[dict[str, Any], int]:
        """Store one instance of a card version; returns the instance payload and the event revision.

        Same card, same endpoint: the existing instance (and lease id) is renewed. A different card for a
        version with unexpired leases: :class:`AlreadyExistsError`; with only expired leases the card is
        replaced and the stale instances are expired.
        """
        namespace, name = card["namespace"], card["name"]
        expires = now + dt.timedelta(seconds=ttl)
        async with self._writer() as conn:
            # Under the writers' lock: a revocation that committed first is seen, even by a replica that has
            # not applied it yet, so a revoked identity can never add an instance after its instances were removed.
            await self._refuse_revoked(conn, registered_by, registered_serial)
            agent_id = await conn.scalar(
                sa.select(agents.c.id).where(agents.c.namespace == namespace, agents.c.name == name)
            )
            if agent_id is None:
                agent_id = await conn.scalar(
                    sa.insert(agents)
                    .values(namespace=namespace, name=name, created_at=now)
                    .returning(agents.c.id)
                )
            row = (
                await conn.execute(
                    sa.select(versions.c.id, versions.c.card_hash).where(
                        versions.c.agent_id == agent_id, versions.c.version == card["version"]
                    )
                )
            ).first()
            if row is None:
                version_id = await self._write_version(conn, None, agent_id, card, card_hash, card_proto, now)
            else:
                version_id = int(row.id)
                if row.card_hash != card_hash:
                    live = await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(instances.join(leases, leases.c.instance_id == instances.c.instance_id))
                        .where(instances.c.agent_version_id == version_id, leases.c.expires_at > now)
                    )
                    if live:
                        raise AlreadyExistsError(
                            f"{namespace}/{name} version {card['version']} is registered with a different card "
                            f"and {live} live instance(s); bump the version or wait for their leases to expire",
                            metadata={"namespace": namespace, "name": name, "version": card["version"]},
                        )
                    stale = (
                        (
                            await conn.execute(
                                sa.delete(instances)
                                .where(instances.c.agent_version_id == version_id)
                                .returning(instances.c.instance_id)
                            )
                        )
                        .scalars()
                        .all()
                    )
                    for stale_id in stale:
                        payload = {"instance_id": stale_id, "reason": "lease expired; card replaced"}
                        await self._append(conn, "EXPIRED", namespace, name, stale_id, payload, now)
                    await self._write_version(conn, version_id, agent_id, card, card_hash, card_proto, now)
            existing = (
                await conn.execute(
                    sa.select(instances.c.instance_id, instances.c.lease_id, instances.c.registered_at).where(
                        instances.c.agent_version_id == version_id, instances.c.endpoint == endpoint
                    )
                )
            ).first()
            registered_at = now
            if existing is not None:
                instance_id, lease_id, registered_at = (
                    existing.instance_id,
                    existing.lease_id,
                    existing.registered_at,
                )
                await conn.execute(
                    sa.update(instances)
                    .where(instances.c.instance_id == instance_id)
                    .values(
                        state="SERVING",
                        load=0.0,
                        lease_ttl_seconds=ttl,
                        registered_by=registered_by,
                        registered_serial=registered_serial,
                        updated_at=now,
                    )
                )
                updated = await conn.execute(
                    sa.update(leases).where(leases.c.instance_id == instance_id).values(expires_at=expires)
                )
                if updated.rowcount == 0:
                    await conn.execute(sa.insert(leases).values(instance_id=instance_id, expires_at=expires))
            else:
                await conn.execute(
                    sa.insert(instances).values(
                        instance_id=instance_id,
                        lease_id=lease_id,
                        agent_version_id=version_id,
                        endpoint=endpoint,
                        state="SERVING",
                        load=0.0,
                        lease_ttl_seconds=ttl,
                        registered_by=registered_by,
                        registered_serial=registered_serial,
                        registered_at=now,
                        updated_at=now,
                    )
                )
                await conn.execute(sa.insert(leases).values(instance_id=instance_id, expires_at=expires))
            payload = {
                "instance_id": instance_id,
                "lease_id": lease_id,
                "version_id": version_id,
                "card_hash": card_hash,
                "endpoint": endpoint,
                "state": "SERVING",
                "load": 0.0,
                "ttl": ttl,
                "registered_by": registered_by,
                "registered_at": epoch(registered_at),
                "expires_at": epoch(expires),
            }
            revision = await self._append(conn, "REGISTERED", namespace, name, instance_id, payload, now)
        return payload, revision

    @staticmethod
    async def _refuse_revoked(conn: AsyncConnection, identity: str, serial: str) -> None:
        subjects = [sa.and_(revocations.c.subject_kind == SPIFFE_ID, revocations.c.subject == identity)]
        if serial:
            subjects.append(
                sa.and_(revocations.c.subject_kind == CERTIFICATE_SERIAL, revocations.c.subject == serial)
            )
        found = (await conn.execute(sa.select(revocations.c.subject_kind).where(sa.or_(*subjects)))).first()
        if found is not None:
            what = f"identity {identity}" if found.subject_kind == SPIFFE_ID else f"certificate {serial} of {identity}"
            raise PermissionDeniedError(f"{what} is revoked", metadata={"identity": identity})

    async def revoke(
        self, subject_kind: str, subject: str, reason: str, revoked_by: str, now: dt.datetime
    ) -> tuple[RevocationRow, int, int | None]:
        """Revoke ``subject`` and remove the instances it registered, in one transaction.

        Returns the revocation in force, how many instances were removed, and the revision of the last event
        written (``None`` when ``subject`` was already revoked: the existing revocation is returned unchanged).
        """
        async with self._writer() as conn:
            key = (revocations.c.subject_kind == subject_kind, revocations.c.subject == subject)
            existing = (await conn.execute(sa.select(revocations).where(*key))).first()
            if existing is not None:
                return _revocation_row(existing), 0, None
            await conn.execute(
                sa.insert(revocations).values(
                    subject_kind=subject_kind, subject=subject, reason=reason, revoked_by=revoked_by, created_at=now
                )
            )
            row = RevocationRow(subject_kind, subject, reason, revoked_by, epoch(now))
            column = instances.c.registered_by if subject_kind == SPIFFE_ID else instances.c.registered_serial
            doomed = (
                await conn.execute(
                    sa.select(instances.c.instance_id, agents.c.namespace, agents.c.name)
                    .select_from(instances.join(versions).join(agents))
                    .where(column == subject)
                )
            ).all()
            why = "identity revoked" if subject_kind == SPIFFE_ID else "certificate revoked"
            for chunk in _chunks(doomed):
                await conn.execute(
                    sa.delete(instances).where(instances.c.instance_id.in_([d.instance_id for d in chunk]))
                )
                await conn.execute(
                    sa.insert(events),
                    [
                        {
                            "event_type": "DEREGISTERED",
                            "namespace": d.namespace,
                            "name": d.name,
                            "instance_id": d.instance_id,
                            "payload": {"instance_id": d.instance_id, "reason": why},
                            "created_at": now,
                        }
                        for d in chunk
                    ],
                )
            revision = await self._append(conn, "REVOKED", "", "", "", row.payload(), now)
            await _audit_revocation(conn, "identity.revoke", subject_kind, subject, revoked_by, reason, len(doomed))
        return row, len(doomed), revision

    async def unrevoke(
        self, subject_kind: str, subject: str, now: dt.datetime, unrevoked_by: str = ""
    ) -> tuple[RevocationRow, int]:
        """Lift the revocation of ``subject``; returns it and the event revision (NotFoundError when none)."""
        async with self._writer() as conn:
            key = (revocations.c.subject_kind == subject_kind, revocations.c.subject == subject)
            existing = (await conn.execute(sa.select(revocations).where(*key))).first()
            if existing is None:
                raise NotFoundError(f"{subject} is not revoked", metadata={"subject": subject})
            await conn.execute(sa.delete(revocations).where(*key))
            row = _revocation_row(existing)
            revision = await self._append(conn, "UNREVOKED", "", "", "", row.payload(), now)
            await _audit_revocation(conn, "identity.unrevoke", subject_kind, subject, unrevoked_by, "", 0)
        return row, revision

    async def deregister(
        self, instance_id: str, namespace: str, name: str, now: dt.datetime, reason: str
    ) -> int | None:
        """Delete an instance at once; returns the event revision, or ``None`` when it was already gone."""
        async with self._writer() as conn:
            deleted = await conn.execute(sa.delete(instances).where(instances.c.instance_id == instance_id))
            if deleted.rowcount == 0:
                return None
            payload = {"instance_id": instance_id, "reason": reason}
            return await self._append(conn, "DEREGISTERED", namespace, name, instance_id, payload, now)

    async def set_state(
        self, instance_id: str, namespace: str, name: str, state: str, now: dt.datetime
    ) -> int | None:
        """Record a state change (SERVING, DRAINING, NOT_SERVING); ``None`` when the instance is gone."""
        async with self._writer() as conn:
            updated = await conn.execute(
                sa.update(instances)
                .where(instances.c.instance_id == instance_id)
                .values(state=state, updated_at=now)
            )
            if updated.rowcount == 0:
                return None
            payload = {"instance_id": instance_id, "state": state}
            return await self._append(conn, "STATE_CHANGED", namespace, name, instance_id, payload, now)

    async def set_load(
        self, instance_id: str, namespace: str, name: str, load: float, now: dt.datetime
    ) -> int | None:
        """Record a reported load that ranking uses (every replica applies it); ``None`` when the instance is gone."""
        async with self._writer() as conn:
            updated = await conn.execute(
                sa.update(instances).where(instances.c.instance_id == instance_id).values(load=load, updated_at=now)
            )
            if updated.rowcount == 0:
                return None
            payload = {"instance_id": instance_id, "load": load}
            return await self._append(conn, "LOAD_CHANGED", namespace, name, instance_id, payload, now)

    async def record_outcome(
        self, namespace: str, name: str, version: str, success: bool, now: dt.datetime
    ) -> int:
        """Append one call outcome of a canary version, so that every replica counts it; its revision."""
        async with self._writer() as conn:
            payload = {"version": version, "success": success}
            return await self._append(conn, "OUTCOME", namespace, name, "", payload, now)

    async def flush_leases(self, expiries: dict[str, dt.datetime]) -> None:
        """Move many lease expiries forward with one statement (never backwards)."""
        if not expiries:
            return
        async with self.engine.begin() as conn:
            if self.is_postgres:
                await conn.execute(
                    sa.text(
                        "UPDATE agent_leases AS l SET expires_at = v.expires_at "
                        "FROM unnest(CAST(:ids AS varchar[]), CAST(:expiries AS timestamptz[])) AS v(instance_id, expires_at) "
                        "WHERE l.instance_id = v.instance_id AND l.expires_at < v.expires_at"
                    ),
                    {"ids": list(expiries), "expiries": list(expiries.values())},
                )
            else:
                statement = (
                    sa.update(leases)
                    .where(
                        leases.c.instance_id == sa.bindparam("b_id"),
                        leases.c.expires_at < sa.bindparam("b_exp"),
                    )
                    .values(expires_at=sa.bindparam("b_exp"))
                )
                await conn.execute(statement, [{"b_id": k, "b_exp": v} for k, v in expiries.items()])

    async def expire_due(self, cutoff: dt.datetime, now: dt.datetime) -> int:
        """Delete leases that expired before ``cutoff`` and their instances; one EXPIRED event each.

        The DELETE decides: a lease row is deleted by exactly one replica, which alone emits its event.
        """
        async with self._writer() as conn:
            due = (
                (
                    await conn.execute(
                        sa.delete(leases).where(leases.c.expires_at < cutoff).returning(leases.c.instance_id)
                    )
                )
                .scalars()
                .all()
            )
            for chunk in _chunks(due):
                rows = (
                    await conn.execute(
                        sa.select(instances.c.instance_id, agents.c.namespace, agents.c.name)
                        .select_from(instances.join(versions).join(agents))
                        .where(instances.c.instance_id.in_(chunk))
                    )
                ).all()
                await conn.execute(sa.delete(instances).where(instances.c.instance_id.in_(chunk)))
                if rows:
                    await conn.execute(
                        sa.insert(events),
                        [
                            {
                                "event_type": "EXPIRED",
                                "namespace": row.namespace,
                                "name": row.name,
                                "instance_id": row.instance_id,
                                "payload": {"instance_id": row.instance_id, "reason": "lease expired"},
                                "created_at": now,
                            }
                            for row in rows
                        ],
                    )
            return len(due)

    async def set_routing(self, namespace: str, name: str, values: dict[str, Any], now: dt.datetime) -> int:
        """Replace the routing policy of ``namespace/name``; returns the event revision."""
        async with self._writer() as conn:
            return await self._put_routing(conn, namespace, name, values, now)

    async def _put_routing(
        self, conn: AsyncConnection, namespace: str, name: str, values: dict[str, Any], now: dt.datetime
    ) -> int:
        key = (policies_table.c.namespace == namespace, policies_table.c.name == name)
        updated = await conn.execute(sa.update(policies_table).where(*key).values(**values, updated_at=now))
        if updated.rowcount == 0:
            await conn.execute(
                sa.insert(policies_table).values(namespace=namespace, name=name, **values, updated_at=now)
            )
        payload = {"namespace": namespace, "name": name, **values, "updated_at": epoch(now)}
        return await self._append(conn, "ROUTING_CHANGED", namespace, name, "", payload, now)

    async def rollback_version(
        self, namespace: str, name: str, version: str, reason: str, now: dt.datetime
    ) -> int | None:
        """Set ``version``'s weight to 0 with ``reason``, unless it already is 0; returns the revision or ``None``."""
        async with self._writer() as conn:
            row = (
                await conn.execute(
                    sa.select(policies_table).where(
                        policies_table.c.namespace == namespace, policies_table.c.name == name
                    )
                )
            ).first()
            if row is None or int(row.weights.get(version, 0)) <= 0:
                return None
            weights = {**row.weights, version: 0}
            values = {"weights": weights, "canary": row.canary, "reason": reason, "updated_by": "registry"}
            return await self._put_routing(conn, namespace, name, values, now)

    async def lease_expiries(self, instance_ids: Sequence[str]) -> dict[str, dt.datetime]:
        """The stored lease expiry of each of these instances that still has a lease."""
        found: dict[str, dt.datetime] = {}
        async with self._reader() as conn:
            for chunk in _chunks(instance_ids):
                rows = await conn.execute(
                    sa.select(leases.c.instance_id, leases.c.expires_at).where(leases.c.instance_id.in_(chunk))
                )
                found.update({row.instance_id: row.expires_at for row in rows})
        return found

    async def events_since(self, revision: int, limit: int = 1000) -> list[EventRow]:
        """Events after ``revision``, oldest first."""
        async with self._reader() as conn:
            rows = await conn.execute(
                sa.select(events).where(events.c.revision > revision).order_by(events.c.revision).limit(limit)
            )
            return [EventRow(**row._mapping) for row in rows]

    async def oldest_revision(self) -> int:
        """The lowest revision still in the log (0 when the log is empty)."""
        async with self._reader() as conn:
            return int(await conn.scalar(sa.select(sa.func.coalesce(sa.func.min(events.c.revision), 0))) or 0)

    async def load_versions(self, version_ids: Iterable[int]) -> list[VersionRow]:
        """Cards of the given versions."""
        ids = list(version_ids)
        found: list[VersionRow] = []
        async with self._reader() as conn:
            for chunk in _chunks(ids):
                found += await self._version_rows(conn, versions.c.id.in_(chunk))
        return found

    @staticmethod
    def _version_select(where: Any) -> Any:
        # The JSON card is read only for rows without card_proto: parsing JSON cards is ~100x slower.
        card_json = sa.case((versions.c.card_proto.is_(None), versions.c.card), else_=sa.null())
        return sa.select(versions.c.id, card_json.label("card"), versions.c.card_hash, versions.c.card_proto).where(
            where
        )

    @classmethod
    async def _version_rows(cls, conn: AsyncConnection, where: Any) -> list[VersionRow]:
        rows = await conn.execute(cls._version_select(where))
        return [VersionRow(row.id, row.card, row.card_hash, row.card_proto) for row in rows]

    async def load_snapshot_in_chunks(
        self,
        take_versions: Callable[[list[VersionRow]], Awaitable[None]],
        take_instances: Callable[[list[Mapping[str, Any]]], Awaitable[None]],
        chunk: int = _SNAPSHOT_CHUNK,
    ) -> tuple[int, list[dict[str, Any]], list[RevocationRow], list[EventRow]]:
        """A consistent copy, streamed: versions, then instances (with expiry), ``chunk`` rows at a time to the
        callbacks (awaited in turn, so at most one chunk is held at once); returns (revision, routing policies,
        revocations, the OUTCOME and ROUTING_CHANGED events within the longest canary window, oldest first: what
        a replica's canary outcome counts are rebuilt from)."""
        async with self._reader() as conn:
            if self.is_postgres:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                revision = int(
                    await conn.scalar(sa.select(sa.func.coalesce(sa.func.max(events.c.revision), 0))) or 0
                )
                streamed = await conn.stream(self._version_select(sa.true()))
                async for part in streamed.partitions(chunk):
                    await take_versions([VersionRow(row.id, row.card, row.card_hash, row.card_proto) for row in part])
                streamed_instances = await conn.stream(
                    sa.select(instances, leases.c.expires_at).select_from(
                        instances.join(leases, leases.c.instance_id == instances.c.instance_id)
                    )
                )
                async for part in streamed_instances.partitions(chunk):
                    await take_instances([cast(Mapping[str, Any], row._mapping) for row in part])
                policy_rows = [dict(row._mapping) for row in await conn.execute(sa.select(policies_table))]
                revocation_rows = [_revocation_row(row) for row in await conn.execute(sa.select(revocations))]
                windows = [float((p.get("canary") or {}).get("window_seconds", 0)) for p in policy_rows]
                outcome_rows: list[EventRow] = []
                if max(windows, default=0.0) > 0:
                    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=max(windows))
                    found = await conn.execute(
                        sa.select(events)
                        .where(
                            events.c.revision <= revision,
                            events.c.created_at >= since,
                            events.c.event_type.in_(("OUTCOME", "ROUTING_CHANGED")),
                        )
                        .order_by(events.c.revision)
                    )
                    outcome_rows = [EventRow(**row._mapping) for row in found]
        return revision, policy_rows, revocation_rows, outcome_rows

    async def load_snapshot(
        self,
    ) -> tuple[int, list[VersionRow], list[dict[str, Any]], list[dict[str, Any]], list[RevocationRow]]:
        """A consistent copy: (revision, versions, instances with expiry, routing policies, revocations)."""
        version_rows: list[VersionRow] = []
        instance_rows: list[dict[str, Any]] = []

        async def take_versions(rows: list[VersionRow]) -> None:
            version_rows.extend(rows)

        async def take_instances(rows: list[Mapping[str, Any]]) -> None:
            instance_rows.extend(dict(row) for row in rows)

        revision, policy_rows, revocation_rows, _ = await self.load_snapshot_in_chunks(take_versions, take_instances)
        return revision, version_rows, instance_rows, policy_rows, revocation_rows

    async def prune_events(self, before: dt.datetime) -> int:
        """Delete change-log rows older than ``before`` (watchers resuming from earlier must re-snapshot)."""
        async with self.engine.begin() as conn:
            deleted = await conn.execute(sa.delete(events).where(events.c.created_at < before))
            return int(deleted.rowcount or 0)

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            async with self._reader() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True


async def _audit_revocation(
    conn: AsyncConnection, action: str, subject_kind: str, subject: str, actor: str, reason: str, removed: int
) -> None:
    """Append the (un)revocation to the audit trail in the same transaction as the change itself."""
    resource = f"revocations/{subject_kind.lower()}/{subject}"
    detail = {"reason": reason, "instances_removed": removed} if action == "identity.revoke" else {}
    await append_audit(conn, [AuditEntry(action=action, resource=resource, actor=actor, detail=detail)])
