"""Registry tables: agents, their versions (cards), skills, live instances, leases, routing, events.

Shape of the data: one ``agents`` row per ``namespace/name``; one ``agent_versions`` row per registered
version of it (the card); its skills in ``agent_skills``; each live endpoint of a version in
``agent_instances``, whose lease expiry lives apart in the narrow ``agent_leases`` table so a replica can
flush thousands of heartbeats with one ``UPDATE agent_leases ... FROM unnest(:ids, :expiries)``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from agentmesh.storage._base import Base
from agentmesh.storage._states import SERVING_STATES, one_of
from agentmesh.storage._types import BigIntPK, JSONDoc, UTCDateTime

__all__ = [
    "Agent",
    "AgentInstance",
    "AgentLease",
    "AgentSkill",
    "AgentVersion",
    "PolicyBit",
    "RegistryEvent",
    "Revocation",
    "RoutingPolicy",
]

# DNS-label-like names are at most 63 characters.
_NAME = 63


class Agent(Base):
    """``agents``: one row per agent name, ``namespace/name`` unique.

    Columns: ``id`` (surrogate key that other tables and in-memory indexes refer to), ``namespace``,
    ``name``, ``created_at``.
    """

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("namespace", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(String(_NAME))
    name: Mapped[str] = mapped_column(String(_NAME))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())

    versions: Mapped[list[AgentVersion]] = relationship(
        back_populates="agent", cascade="all, delete-orphan", passive_deletes=True
    )


class AgentVersion(Base):
    """``agent_versions``: the card of one version of an agent, ``(agent_id, version)`` unique.

    Columns: ``agent_id`` -> agents; ``version`` (PEP 440 text); ``purpose``; ``description``;
    ``policies`` (JSON list of "key:value" strings); ``policy_mask`` (64-bit bitmask of the policies, bit
    indexes from ``policy_bits``, so "all required policies hold" is ``policy_mask & :req = :req``);
    ``labels`` (JSON object str -> str); ``owner``; ``spiffe_id``; ``card`` (the whole AgentCard as JSON,
    endpoint excluded since that belongs to an instance); ``card_hash`` (SHA-256 hex of the canonical card,
    to tell an idempotent re-registration from a conflicting one); ``card_proto`` (the card as serialized
    protobuf, for fast loading); ``created_at``.
    """

    __tablename__ = "agent_versions"
    __table_args__ = (
        UniqueConstraint("agent_id", "version"),
        Index(None, "purpose"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    agent_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("agents.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(128), default="", server_default="")
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    policies: Mapped[list[str]] = mapped_column(JSONDoc, default=list, server_default=text("'[]'"))
    policy_mask: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    labels: Mapped[dict[str, str]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    owner: Mapped[str] = mapped_column(String(256), default="", server_default="")
    spiffe_id: Mapped[str] = mapped_column(String(512), default="", server_default="")
    card: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    card_hash: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # The same card as serialized protobuf (migration 0002): a registry replica loads 100k cards from it in
    # about a second, where parsing the JSON form takes tens of seconds. NULL for rows written before 0002.
    card_proto: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())

    agent: Mapped[Agent] = relationship(back_populates="versions")
    skills: Mapped[list[AgentSkill]] = relationship(
        back_populates="agent_version", cascade="all, delete-orphan", passive_deletes=True
    )
    instances: Mapped[list[AgentInstance]] = relationship(
        back_populates="agent_version", cascade="all, delete-orphan", passive_deletes=True
    )


class AgentSkill(Base):
    """``agent_skills``: one skill of one agent version, ``(agent_version_id, skill_name)`` unique.

    Columns: ``agent_version_id`` -> agent_versions; ``skill_name`` (indexed: "who offers skill X?");
    ``description``; ``input_schema`` and ``output_schema`` (JSON Schema documents); ``tags`` (JSON list).
    """

    __tablename__ = "agent_skills"
    __table_args__ = (
        UniqueConstraint("agent_version_id", "skill_name"),
        Index(None, "skill_name"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    agent_version_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("agent_versions.id", ondelete="CASCADE")
    )
    skill_name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    input_schema: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    output_schema: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    tags: Mapped[list[str]] = mapped_column(JSONDoc, default=list, server_default=text("'[]'"))

    agent_version: Mapped[AgentVersion] = relationship(back_populates="skills")


class AgentInstance(Base):
    """``agent_instances``: one live endpoint of one agent version.

    Columns: ``instance_id`` (opaque id, primary key); ``lease_id`` (unique; heartbeats name it);
    ``agent_version_id`` -> agent_versions; ``endpoint`` ("host:port"); ``state`` (SERVING, DRAINING or
    NOT_SERVING); ``load`` in [0, 1]; ``lease_ttl_seconds`` (granted TTL); ``registered_by`` (caller's
    SPIFFE id); ``registered_at``; ``updated_at`` (last state/load change, not every heartbeat).
    The lease expiry is in ``agent_leases``.
    """

    __tablename__ = "agent_instances"
    __table_args__ = (
        one_of("state", SERVING_STATES),
        UniqueConstraint("lease_id"),
        Index(None, "agent_version_id"),
    )

    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lease_id: Mapped[str] = mapped_column(String(64))
    agent_version_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("agent_versions.id", ondelete="CASCADE")
    )
    endpoint: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="SERVING", server_default="SERVING")
    load: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    lease_ttl_seconds: Mapped[float] = mapped_column(Float)
    registered_by: Mapped[str] = mapped_column(String(512), default="", server_default="")
    registered_serial: Mapped[str] = mapped_column(String(64), default="", server_default="")
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())

    agent_version: Mapped[AgentVersion] = relationship(back_populates="instances")
    lease: Mapped[AgentLease | None] = relationship(
        back_populates="instance", cascade="all, delete-orphan", passive_deletes=True
    )


class AgentLease(Base):
    """``agent_leases``: NARROW table, ``instance_id`` (primary key, -> agent_instances) and ``expires_at``.

    Kept apart from ``agent_instances`` so that batched heartbeat flushes rewrite two-column rows only;
    ``expires_at`` is indexed so expiry sweeps find due leases without a scan.
    """

    __tablename__ = "agent_leases"
    __table_args__ = (Index(None, "expires_at"),)

    instance_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("agent_instances.instance_id", ondelete="CASCADE"), primary_key=True
    )
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    instance: Mapped[AgentInstance] = relationship(back_populates="lease")


class RoutingPolicy(Base):
    """``routing_policies``: version weights (canary) of one agent name, primary key ``(namespace, name)``.

    No foreign key to ``agents``: an operator may set a policy before the agent first registers.
    Columns: ``weights`` (JSON object version -> int weight); ``canary`` (JSON object with
    ``max_error_rate``, ``min_requests``, ``window_seconds``; empty means no automatic rollback);
    ``reason`` (operator note or rollback reason); ``updated_by``; ``updated_at``.
    """

    __tablename__ = "routing_policies"

    namespace: Mapped[str] = mapped_column(String(_NAME), primary_key=True)
    name: Mapped[str] = mapped_column(String(_NAME), primary_key=True)
    weights: Mapped[dict[str, int]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    canary: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    updated_by: Mapped[str] = mapped_column(String(512), default="", server_default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())


class RegistryEvent(Base):
    """``registry_events``: the change log that ``WatchAgents`` streams, across replicas.

    ``revision`` is an autoincrement 64-bit key: a replica polls ``WHERE revision > :last ORDER BY
    revision``. On PostgreSQL a lower revision can commit after a higher one, so a poller should re-read
    a short window behind its last revision (or serialize writers) rather than trust gap-free order.
    Columns: ``event_type`` (AgentEventType name without prefix, e.g. REGISTERED); ``namespace``,
    ``name`` and ``instance_id`` of the subject (instance_id empty for routing changes); ``payload`` (JSON:
    the instance or routing policy as of the event, and a reason); ``created_at`` (indexed for pruning).
    """

    __tablename__ = "registry_events"
    __table_args__ = (Index(None, "created_at"),)

    revision: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    event_type: Mapped[str] = mapped_column(String(32))
    namespace: Mapped[str] = mapped_column(String(_NAME), default="", server_default="")
    name: Mapped[str] = mapped_column(String(_NAME), default="", server_default="")
    instance_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())


class PolicyBit(Base):
    """``policy_bits``: which bit of ``agent_versions.policy_mask`` stands for which policy string.

    ``policy`` (primary key, e.g. "pii:allowed") -> ``bit`` (unique, 0..62; 63 is left alone so masks
    stay non-negative in a signed BIGINT). Bits are assigned once and never reused.
    """

    __tablename__ = "policy_bits"
    __table_args__ = (UniqueConstraint("bit"),)

    policy: Mapped[str] = mapped_column(String(128), primary_key=True)
    bit: Mapped[int] = mapped_column(SmallInteger)


class Revocation(Base):
    """``revocations``: identities and certificates the whole mesh refuses, ``(subject_kind, subject)`` unique.

    Columns: ``subject_kind`` (SPIFFE_ID or CERTIFICATE_SERIAL); ``subject`` (the SPIFFE id, or the serial as
    lowercase hex); ``reason``; ``revoked_by`` (the operator's SPIFFE id); ``created_at``. A row exists while
    the revocation is in force (unrevoking deletes it); each change is also a REVOKED / UNREVOKED event in
    ``registry_events`` so that every replica, and every server following it, learns of it in order.
    """

    __tablename__ = "revocations"
    __table_args__ = (
        one_of("subject_kind", ("SPIFFE_ID", "CERTIFICATE_SERIAL")),
        UniqueConstraint("subject_kind", "subject"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    subject_kind: Mapped[str] = mapped_column(String(24))
    subject: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    revoked_by: Mapped[str] = mapped_column(String(512), default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
