"""The in-memory discovery index of one registry replica: filters as numpy arrays, BM25 for intent.

Every card version has a *slot*; per slot the index keeps policy bitmasks, the count of SERVING instances,
the lowest instance load and small ids (agent, version string). Skills, purposes and labels map to slot
sets. A query intersects the small sets first, then filters with vectorised array operations, ranks, and
only then turns the few best slots into Python objects. Visibility regexes are evaluated once per agent
name and scope, and remembered (names never change, so the memo only grows with new agents).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import numpy.typing as npt
from packaging.specifiers import SpecifierSet

from agentmesh.services.registry.model import (
    SERVING,
    Candidate,
    DiscoveryQuery,
    DiscoveryResult,
    InstanceRecord,
    VersionRecord,
)
from agentmesh.services.registry.routing import RoutePolicy, choose_version
from agentmesh.services.registry.text import TextIndex, tokenize

__all__ = ["AgentIndex"]

_VISIBILITY_MEMO_SIZE = 256
_UNKNOWN, _VISIBLE, _HIDDEN = 0, 1, 2
# Field weights for BM25: names, purposes and skill names say more than prose.
_NAME_WEIGHT = 2


class _SlotSets:
    """key -> set of slots, with a cached sorted numpy array per key."""

    def __init__(self) -> None:
        self._sets: dict[object, set[int]] = {}
        self._arrays: dict[object, npt.NDArray[np.int64]] = {}

    def add(self, key: object, slot: int) -> None:
        self._sets.setdefault(key, set()).add(slot)
        self._arrays.pop(key, None)

    def discard(self, key: object, slot: int) -> None:
        slots = self._sets.get(key)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._sets[key]
            self._arrays.pop(key, None)

    def array(self, key: object) -> npt.NDArray[np.int64]:
        cached = self._arrays.get(key)
        if cached is None:
            cached = np.array(sorted(self._sets.get(key, ())), dtype=np.int64)
            self._arrays[key] = cached
        return cached


class AgentIndex:
    """Cards, live instances and everything discovery filters and ranks by."""

    def __init__(self) -> None:
        self.versions: dict[int, VersionRecord] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self.by_lease: dict[str, str] = {}
        self._slots: list[VersionRecord] = []
        self._agent_ix: dict[str, int] = {}
        self._agent_keys: list[str] = []
        self._agent_slots: list[list[int]] = []
        self._version_ids: dict[str, int] = {}
        self._version_strings: list[str] = []
        self._policy_bits: dict[str, int] = {}
        capacity = 1024
        self._serving = np.zeros(capacity, dtype=np.int32)
        self._min_load = np.zeros(capacity, dtype=np.float32)
        self._agent_of = np.zeros(capacity, dtype=np.int32)
        self._version_of = np.zeros(capacity, dtype=np.int32)
        self._masks: list[npt.NDArray[np.uint64]] = []
        self._skills = _SlotSets()
        self._purposes = _SlotSets()
        self._labels = _SlotSets()
        self._text = TextIndex()
        self._visibility: OrderedDict[object, npt.NDArray[np.int8]] = OrderedDict()
        self.serving_instances = 0

    # ------------------------------------------------------------------ changes

    def _grow(self, needed: int) -> None:
        capacity = len(self._serving)
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2

        def grown(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
            bigger = np.zeros(capacity, dtype=array.dtype)
            bigger[: len(array)] = array
            return bigger

        self._serving = grown(self._serving)  # type: ignore[assignment]
        self._min_load = grown(self._min_load)  # type: ignore[assignment]
        self._agent_of = grown(self._agent_of)  # type: ignore[assignment]
        self._version_of = grown(self._version_of)  # type: ignore[assignment]
        self._masks = [grown(mask) for mask in self._masks]  # type: ignore[misc]

    def _agent(self, key: str) -> int:
        ix = self._agent_ix.get(key)
        if ix is None:
            ix = len(self._agent_keys)
            self._agent_ix[key] = ix
            self._agent_keys.append(key)
            self._agent_slots.append([])
        return ix

    def _bit(self, policy: str) -> int:
        bit = self._policy_bits.get(policy)
        if bit is None:
            bit = len(self._policy_bits)
            self._policy_bits[policy] = bit
            if bit // 64 >= len(self._masks):
                self._masks.append(np.zeros(len(self._serving), dtype=np.uint64))
        return bit

    def _unindex(self, record: VersionRecord) -> None:
        card, slot = record.card, record.slot
        for skill in card.skills:
            self._skills.discard(skill.name, slot)
        self._purposes.discard(card.purpose, slot)
        for item in card.labels.items():
            self._labels.discard(item, slot)
        for mask in self._masks:
            mask[slot] = 0

    def put_version(self, record: VersionRecord) -> VersionRecord:
        """Add a card version, or replace the card of a known one (its instances stay)."""
        old = self.versions.get(record.version_id)
        if old is not None:
            self._unindex(old)
            record.slot, record.instances = old.slot, old.instances
        else:
            record.slot = len(self._slots)
            self._slots.append(record)
            self._grow(record.slot + 1)
        self._slots[record.slot] = record
        self.versions[record.version_id] = record
        card, slot = record.card, record.slot
        agent = self._agent(record.key)
        if slot not in self._agent_slots[agent]:
            self._agent_slots[agent].append(slot)
        self._agent_of[slot] = agent
        version_id = self._version_ids.setdefault(card.version, len(self._version_strings))
        if version_id == len(self._version_strings):
            self._version_strings.append(card.version)
        self._version_of[slot] = version_id
        for policy in card.policies:
            bit = self._bit(policy)
            self._masks[bit // 64][slot] |= np.uint64(1 << (bit % 64))
        for skill in card.skills:
            self._skills.add(skill.name, slot)
        self._purposes.add(card.purpose, slot)
        for item in card.labels.items():
            self._labels.add(item, slot)
        tokens = tokenize(f"{card.name} {card.purpose}") * _NAME_WEIGHT + tokenize(card.description)
        for skill in card.skills:
            tokens += tokenize(skill.name) * _NAME_WEIGHT + tokenize(
                f"{skill.description} {' '.join(skill.tags)}"
            )
        self._text.set(slot, tokens)
        return record

    def _refresh_slot(self, record: VersionRecord) -> None:
        serving = [i.load for i in record.instances.values() if i.state == SERVING]
        self._serving[record.slot] = len(serving)
        self._min_load[record.slot] = min(serving) if serving else 0.0

    def put_instance(self, instance: InstanceRecord) -> InstanceRecord | None:
        """Add or replace a live instance; returns it, or ``None`` when its version is unknown."""
        record = self.versions.get(instance.version_id)
        if record is None:
            return None
        self.remove_instance(instance.instance_id)
        record.instances[instance.instance_id] = instance
        self.instances[instance.instance_id] = instance
        self.by_lease[instance.lease_id] = instance.instance_id
        self.serving_instances += instance.state == SERVING
        self._refresh_slot(record)
        return instance

    def remove_instance(self, instance_id: str) -> InstanceRecord | None:
        """Forget an instance (deregistered or expired); returns it when it was known."""
        instance = self.instances.pop(instance_id, None)
        if instance is None:
            return None
        self.by_lease.pop(instance.lease_id, None)
        self.serving_instances -= instance.state == SERVING
        record = self.versions.get(instance.version_id)
        if record is not None:
            record.instances.pop(instance_id, None)
            self._refresh_slot(record)
        return instance

    def set_state(self, instance_id: str, state: int) -> InstanceRecord | None:
        """Record a state change reported by heartbeat."""
        instance = self.instances.get(instance_id)
        if instance is None:
            return None
        self.serving_instances += (state == SERVING) - (instance.state == SERVING)
        instance.state = state
        self._refresh_slot(self.versions[instance.version_id])
        return instance

    def set_load(self, instance: InstanceRecord, load: float) -> None:
        """Record the load an instance reported (ranking prefers less loaded instances)."""
        if instance.load != load:
            instance.load = load
            self._refresh_slot(self.versions[instance.version_id])

    # ------------------------------------------------------------------ reads

    def version_records(self, namespace: str, name: str) -> list[VersionRecord]:
        """Every known version of ``namespace/name``, lowest first."""
        ix = self._agent_ix.get(f"{namespace}/{name}")
        if ix is None:
            return []
        return sorted((self._slots[s] for s in self._agent_slots[ix]), key=lambda r: r.parsed_version)

    def iter_instances(self) -> Iterator[tuple[InstanceRecord, VersionRecord]]:
        """Every live instance with its card version."""
        for instance in self.instances.values():
            yield instance, self.versions[instance.version_id]

    # ------------------------------------------------------------------ discovery

    def _visibility_memo(self, query: DiscoveryQuery) -> npt.NDArray[np.int8]:
        key = (query.names, tuple(p.pattern for p in query.patterns))
        memo = self._visibility.get(key)
        if memo is None:
            memo = np.zeros(len(self._agent_keys), dtype=np.int8)
            self._visibility[key] = memo
            while len(self._visibility) > _VISIBILITY_MEMO_SIZE:
                self._visibility.popitem(last=False)
        else:
            self._visibility.move_to_end(key)
        if len(memo) < len(self._agent_keys):
            memo = np.concatenate([memo, np.zeros(len(self._agent_keys) - len(memo), dtype=np.int8)])
            self._visibility[key] = memo
        return memo

    def _visible(self, query: DiscoveryQuery, agents: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
        """Whether each agent in ``agents`` passes the visibility scope (memoised per scope)."""
        memo = self._visibility_memo(query)
        unknown = np.unique(agents[memo[agents] == _UNKNOWN])
        for ix in unknown.tolist():
            key = self._agent_keys[ix]
            seen = key in query.names or any(p.fullmatch(key) for p in query.patterns)
            memo[ix] = _VISIBLE if seen else _HIDDEN
        return memo[agents] == _VISIBLE

    def _visibility_reason(self, query: DiscoveryQuery, key: str) -> str:
        if not query.has_visibility_scope:
            return "visible: no visibility scope"
        if key in query.names:
            return f"visible: named {key}"
        pattern = next(p.pattern for p in query.patterns if p.fullmatch(key))
        return f"visible: {key} matches {pattern!r}"

    def _allowed_versions(self, constraint: SpecifierSet) -> npt.NDArray[np.int64]:
        return np.array(
            [i for i, v in enumerate(self._version_strings) if constraint.contains(v, prereleases=True)],
            dtype=np.int64,
        )

    def discover(self, query: DiscoveryQuery, policies: Mapping[str, RoutePolicy]) -> DiscoveryResult:
        """Filter by visibility then characteristics, rank, route to one version per agent, best first."""
        size = len(self._slots)
        live = self._serving[:size] > 0
        if query.has_visibility_scope:
            visible_live = np.flatnonzero(live)
            visible_live = visible_live[self._visible(query, self._agent_of[visible_live])]
            visible_count = int(self._serving[visible_live].sum())
        else:
            visible_count = self.serving_instances

        candidates: npt.NDArray[np.int64] | None = None
        for sets, key in (
            (self._skills, query.skill),
            (self._purposes, query.purpose),
            *((self._labels, item) for item in query.labels),
        ):
            if key:
                found = sets.array(key)
                candidates = (
                    found if candidates is None else np.intersect1d(candidates, found, assume_unique=True)
                )
        relevance: npt.NDArray[np.float32] | None = None
        terms = tokenize(query.intent) if query.intent else []
        if terms:
            relevance = self._text.scores(terms, size)
            if relevance is None:
                return DiscoveryResult([], visible_count, 0)
            matches = np.flatnonzero(relevance)
            candidates = (
                matches if candidates is None else np.intersect1d(candidates, matches, assume_unique=True)
            )
        if candidates is None:
            candidates = np.flatnonzero(live)
        else:
            candidates = candidates[live[candidates]]
        if query.required_policies:
            for word, bits in self._required_masks(query.required_policies).items():
                if bits is None:
                    return DiscoveryResult([], visible_count, 0)
                candidates = candidates[(self._masks[word][candidates] & bits) == bits]
        if query.version_constraint is not None:
            allowed = self._allowed_versions(query.version_constraint)
            candidates = candidates[np.isin(self._version_of[candidates], allowed)]
        if query.has_visibility_scope and len(candidates):
            candidates = candidates[self._visible(query, self._agent_of[candidates])]
        matched_count = int(self._serving[candidates].sum())
        if not len(candidates):
            return DiscoveryResult([], visible_count, 0)

        base = relevance[candidates] if relevance is not None else np.ones(len(candidates), dtype=np.float32)
        scores = base * (1.0 - 0.2 * self._min_load[candidates])
        answer = self._route(query, candidates, scores, relevance, terms, policies)
        return DiscoveryResult(answer, visible_count, matched_count)

    def _required_masks(self, policies: Iterable[str]) -> dict[int, np.uint64 | None]:
        words: dict[int, np.uint64 | None] = {}
        for policy in policies:
            bit = self._policy_bits.get(policy)
            if bit is None:
                return {0: None}  # no card has it, so nothing can match
            word = bit // 64
            current = words.get(word) or np.uint64(0)
            words[word] = current | np.uint64(1 << (bit % 64))
        return words

    def _route(
        self,
        query: DiscoveryQuery,
        candidates: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
        relevance: npt.NDArray[np.float32] | None,
        terms: list[str],
        policies: Mapping[str, RoutePolicy],
    ) -> list[Candidate]:
        """One candidate per agent: best slots first, each agent routed among its matching versions."""
        wanted = query.max_results
        score_of = dict(zip(candidates.tolist(), scores.tolist(), strict=True))
        matched = set(score_of) if len(candidates) < 4096 else None
        mask = None
        if matched is None:
            mask = np.zeros(len(self._slots), dtype=np.bool_)
            mask[candidates] = True
        take = min(len(candidates), wanted * 4)
        answer: list[Candidate] = []
        seen_agents: set[int] = set()
        while True:
            if take < len(candidates):
                top = np.argpartition(-scores, take - 1)[:take]
            else:
                top = np.arange(len(candidates))
            top = top[np.argsort(-scores[top], kind="stable")]
            for position in top.tolist():
                slot = int(candidates[position])
                agent = int(self._agent_of[slot])
                if agent in seen_agents:
                    continue
                seen_agents.add(agent)
                siblings = [
                    s
                    for s in self._agent_slots[agent]
                    if (s in matched if matched is not None else mask[s])  # type: ignore[index]
                ]
                answer.append(self._candidate(query, slot, siblings, score_of, relevance, terms, policies))
                if len(answer) == wanted:
                    break
            if len(answer) == wanted or take >= len(candidates):
                break
            take = min(len(candidates), take * 4)
        answer.sort(key=lambda c: -c.score)
        return answer

    def _candidate(
        self,
        query: DiscoveryQuery,
        best_slot: int,
        siblings: list[int],
        score_of: dict[int, float],
        relevance: npt.NDArray[np.float32] | None,
        terms: list[str],
        policies: Mapping[str, RoutePolicy],
    ) -> Candidate:
        record = self._slots[best_slot]
        reasons = [self._visibility_reason(query, record.key)]
        slot = best_slot
        if len(siblings) > 1 or record.key in policies:
            by_version = {self._slots[s].card.version: s for s in siblings}
            version, why = choose_version(policies.get(record.key), list(by_version), query.routing_key)
            slot = by_version[version]
            record = self._slots[slot]
            reasons.append(why)
        card = record.card
        if query.purpose:
            reasons.append(f"purpose = {card.purpose}")
        if query.required_policies:
            reasons.append("policies hold: " + ", ".join(query.required_policies))
        if query.skill:
            reasons.append(f"skill: {query.skill}")
        if query.labels:
            reasons.append("labels match: " + ", ".join(f"{k}={v}" for k, v in query.labels))
        if query.version_constraint is not None:
            reasons.append(f"version {card.version} satisfies {query.version_constraint}")
        matched_skill = query.skill
        if terms and relevance is not None:
            hit = [t for t in dict.fromkeys(terms) if self._text.contains(slot, t)]
            reasons.append(f"intent matched: {', '.join(hit)} (bm25 {float(relevance[slot]):.2f})")
            if not matched_skill:
                matched_skill = _best_skill(record, hit)
        instance = self._pick_instance(record, query.routing_key)
        reasons.append(f"instance {instance.endpoint} SERVING, load {instance.load:.2f}")
        return Candidate(instance, record, round(score_of[slot], 6), tuple(reasons), matched_skill)

    @staticmethod
    def _pick_instance(record: VersionRecord, routing_key: str) -> InstanceRecord:
        serving = [i for i in record.instances.values() if i.state == SERVING]

        def spread(instance: InstanceRecord) -> bytes:
            return hashlib.blake2b(
                f"{routing_key}\x00{instance.instance_id}".encode(), digest_size=4
            ).digest()

        return min(serving, key=lambda i: (round(i.load, 2), spread(i)))


def _best_skill(record: VersionRecord, terms: list[str]) -> str:
    """The skill whose text shares most words with the intent."""
    wanted = set(terms)
    best, best_hits = "", 0
    for skill in record.card.skills:
        words = set(tokenize(f"{skill.name} {skill.description} {' '.join(skill.tags)}"))
        hits = len(words & wanted)
        if hits > best_hits:
            best, best_hits = skill.name, hits
    return best
