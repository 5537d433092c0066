"""The registry's domain records: a card version, a live instance, a discovery query and its answer."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
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


# Parsed cards kept for the records read most recently: a parsed card costs ~7 KB of protobuf arena against ~0.7 KB
# serialized, so a 100k registry keeps its cards serialized and parses one on use (~5 µs).
_PARSED_CARDS: OrderedDict[int, tuple[VersionRecord, agent_pb2.AgentCard]] = OrderedDict()
_PARSED_CAPACITY = 1024


class VersionRecord:
    """The card of one version of one agent (endpoint cleared: that belongs to an instance).

    The card is kept serialized (:attr:`card_bytes`); :attr:`card` parses it on use (the last thousand or so used
    stay parsed). ``namespace``, ``name`` and ``version`` are kept as strings for the hot paths.
    """

    __slots__ = (
        "basic_card",
        "card_bytes",
        "card_hash",
        "instances",
        "name",
        "namespace",
        "parsed_version",
        "slot",
        "version",
        "version_id",
    )

    def __init__(
        self,
        version_id: int,
        card: agent_pb2.AgentCard,
        parsed_version: Version,
        card_hash: str,
        *,
        card_bytes: bytes | None = None,
    ) -> None:
        self.version_id = version_id
        # ``card_bytes``: ``card`` serialized already (as stored), saving a serialization.
        self.card_bytes = card.SerializeToString(deterministic=True) if card_bytes is None else card_bytes
        self.parsed_version = parsed_version
        self.card_hash = card_hash
        self.namespace, self.name, self.version = card.namespace, card.name, card.version
        self.slot = -1
        self.instances: dict[str, InstanceRecord] = {}
        # The card's BASIC view (see ``basic_card``), serialized; set when the discovery index takes the version.
        self.basic_card: bytes | None = None

    @property
    def card(self) -> agent_pb2.AgentCard:
        """The card (parsed on use; the same message while it stays among the recently used). Never change it."""
        cached = _PARSED_CARDS.get(id(self))
        if cached is not None and cached[0] is self:
            with contextlib.suppress(KeyError):  # dropped meanwhile by another thread: still a good card
                _PARSED_CARDS.move_to_end(id(self))
            return cached[1]
        card = agent_pb2.AgentCard.FromString(self.card_bytes)
        _PARSED_CARDS[id(self)] = (self, card)  # the record is held too, so its id is not reused meanwhile
        if len(_PARSED_CARDS) > _PARSED_CAPACITY:
            _PARSED_CARDS.popitem(last=False)
        return card

    @property
    def key(self) -> str:
        """``namespace/name``, what visibility patterns match."""
        return f"{self.namespace}/{self.name}"


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
