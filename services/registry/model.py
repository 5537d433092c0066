"""The registry's domain records: a card version, a live instance, a discovery query and its answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from agentmesh.v1 import agent_pb2

if TYPE_CHECKING:
    from agentmesh.services.registry.visibility import VisibilityPattern

__all__ = [
    "Candidate",
    "DiscoveryQuery",
    "DiscoveryResult",
    "InstanceRecord",
    "VersionRecord",
    "basic_card",
    "echo",
]

SERVING = agent_pb2.SERVING_STATE_SERVING


@dataclass(slots=True)
class InstanceRecord:
    """One live endpoint of one agent version, with its lease."""

    instance_id: str
    lease_id: str
    version_id: int
    endpoint: str
    state: int  # agentmesh.v1.ServingState
    load: float
    ttl: float  # seconds granted per renewal
    registered_by: str
    registered_at: float  # epoch seconds
    expires_at: float  # epoch seconds, as this replica knows it


@dataclass(slots=True)
class VersionRecord:
    """The card of one version of one agent (endpoint cleared: that belongs to an instance)."""

    version_id: int
    card: agent_pb2.AgentCard
    parsed_version: Version
    card_hash: str
    slot: int = -1
    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    # The card's BASIC view (see ``basic_card``), serialized; set when the discovery index takes the version.
    basic_card: bytes | None = None

    @property
    def key(self) -> str:
        """``namespace/name``, what visibility patterns match."""
        return f"{self.card.namespace}/{self.card.name}"


def basic_card(card: agent_pb2.AgentCard) -> agent_pb2.AgentCard:
    """The BASIC view of ``card`` (``INSTANCE_VIEW_BASIC``): what a caller needs to pick and call an agent, not
    to document it: no description, no skill descriptions or schemas."""
    basic = agent_pb2.AgentCard()
    basic.CopyFrom(card)
    basic.ClearField("description")
    for skill in basic.skills:
        skill.ClearField("description")
        skill.ClearField("input_schema")
        skill.ClearField("output_schema")
    return basic


def echo(text: str, limit: int = 80) -> str:
    """``text`` quoted, cut to ``limit`` characters: caller input repeated in a reason or a message stays small."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


@dataclass(frozen=True)
class DiscoveryQuery:
    """Visibility scope, then characteristics scope, then ranking; validated by the caller."""

    names: frozenset[str] = frozenset()
    patterns: tuple[VisibilityPattern, ...] = ()
    purpose: str = ""
    required_policies: tuple[str, ...] = ()
    skill: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    version_constraint: SpecifierSet | None = None
    intent: str = ""
    max_results: int = 10
    routing_key: str = ""

    @property
    def has_visibility_scope(self) -> bool:
        """Whether the caller narrowed visibility at all (empty means everything is visible)."""
        return bool(self.names or self.patterns)


@dataclass(slots=True)
class Candidate:
    """One ranked answer: the instance to call, its card, a score and the reasons."""

    instance: InstanceRecord
    version: VersionRecord
    score: float
    reasons: tuple[str, ...]
    matched_skill: str


@dataclass(frozen=True)
class DiscoveryResult:
    """Candidates best first, and how many live instances passed each scope."""

    candidates: list[Candidate]
    visible_count: int
    matched_count: int
