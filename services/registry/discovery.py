"""The in-memory discovery index of one registry replica: filters as numpy arrays, BM25 for intent.

Every card version has a *slot*; per slot the index keeps policy bitmasks, the count of SERVING instances,
the lowest instance load and small ids (agent, version string). Skills, purposes and labels map to slot
sets. A query intersects the small sets first, then filters with vectorised array operations, ranks, and
only then turns the few best slots into Python objects. Visibility patterns are RE2 regexes evaluated once
per pattern and agent, off the event loop when many names are left (``visibility``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping

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
    basic_card,
    echo,
)
from agentmesh.services.registry.routing import RoutePolicy, choose_version
from agentmesh.services.registry.text import Bm25Plan, TextIndex, tokenize
from agentmesh.services.registry.visibility import VisibilityIndex, warm_scanner

__all__ = ["AgentIndex"]

_VISIBILITY_MEMO_SIZE = 256
# Field weights for BM25: names, purposes and skill names say more than prose.
_NAME_WEIGHT = 2


class _SlotSets:
    """key -> set of slots, with cached sorted numpy arrays per key: every slot, and the live ones.

    The live view (slots with a SERVING instance, and their first policy-mask word alongside) spares a query
    the liveness filter and the mask gather; it is dropped when a slot of the key gains or loses its last
    SERVING instance, and rebuilt from the full array with two vectorised gathers.
    """

    def __init__(self) -> None:
        self._sets: dict[object, set[int]] = {}
        self._arrays: dict[object, npt.NDArray[np.int64]] = {}
        self._live: dict[object, tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64] | None]] = {}

    def add(self, key: object, slot: int) -> None:
        self._sets.setdefault(key, set()).add(slot)
        self._arrays.pop(key, None)
        self._live.pop(key, None)

    def discard(self, key: object, slot: int) -> None:
        slots = self._sets.get(key)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._sets[key]
            self._arrays.pop(key, None)
            self._live.pop(key, None)

    def stale(self, key: object) -> None:
        """A slot of ``key`` started or stopped serving."""
        self._live.pop(key, None)

    def array(self, key: object) -> npt.NDArray[np.int64]:
        cached = self._arrays.get(key)
        if cached is None:
            cached = np.array(sorted(self._sets.get(key, ())), dtype=np.int64)
            self._arrays[key] = cached
        return cached

    def live(
        self, key: object, serving: npt.NDArray[np.int32], mask: npt.NDArray[np.uint64] | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64] | None]:
        """The slots of ``key`` with a SERVING instance, and their policy-mask word 0 (when any policy exists)."""
        cached = self._live.get(key)
        if cached is None:
            slots = self.array(key)
            slots = slots[serving[slots] > 0]
            cached = (slots, None if mask is None else mask[slots])
            self._live[key] = cached
        return cached


class AgentIndex:
    """Cards, live instances and everything discovery filters and ranks by."""

    def __init__(self) -> None:
        self.versions: dict[int, VersionRecord] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self.by_lease: dict[str, str] = {}
        self._slots: list[VersionRecord] = []
        # Per slot, (skill name, " its distinct words "): which skill an intent matched, without re-tokenising
        # a card on its first answer (~10 µs each); a string per skill is a fifth of a frozenset's memory.
        self._skill_words: list[tuple[tuple[str, str], ...]] = []
        self._agent_ix: dict[str, int] = {}
        self._agent_keys: list[str] = []
        self._agent_slots: list[list[int]] = []
        self._version_ids: dict[str, int] = {}
        self._version_strings: list[str] = []
        self._policy_bits: dict[str, int] = {}
        capacity = 1024
        self._serving = np.zeros(capacity, dtype=np.int32)
        self._min_load = np.zeros(capacity, dtype=np.float32)
        # Ranking factor per slot: 0 when no instance is SERVING, else 1 - 0.2 * lowest load.
        self._boost = np.zeros(capacity, dtype=np.float32)
        # Bumped whenever liveness changes, so per-scope visible counts can be cached.
        self._epoch = 0
        self._multi_instance_slots = 0  # slots with more than one SERVING instance
        self._visible_counts: dict[object, tuple[int, int]] = {}
        self._agent_of = np.zeros(capacity, dtype=np.int32)
        self._version_of = np.zeros(capacity, dtype=np.int32)
        self._masks: list[npt.NDArray[np.uint64]] = []
        self._skills = _SlotSets()
        self._purposes = _SlotSets()
        self._labels = _SlotSets()
        self._text = TextIndex()
        self._visibility = VisibilityIndex(self._agent_keys, self._agent_ix)
        # SERVING instances per agent (all its versions), for counting what a visibility scope lets through.
        self._agent_serving = np.zeros(1024, dtype=np.int32)
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
        self._boost = grown(self._boost)  # type: ignore[assignment]
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
            if ix >= len(self._agent_serving):
                grown = np.zeros(2 * len(self._agent_serving), dtype=np.int32)
                grown[: len(self._agent_serving)] = self._agent_serving
                self._agent_serving = grown
            self._visibility.add(key, ix)
        return ix

    def _bit(self, policy: str) -> int:
        bit = self._policy_bits.get(policy)
        if bit is None:
            bit = len(self._policy_bits)
            self._policy_bits[policy] = bit
            if bit // 64 >= len(self._masks):
                self._masks.append(np.zeros(len(self._serving), dtype=np.uint64))
        return bit

    def _stale(self, record: VersionRecord) -> None:
        """Drop the cached live views that hold ``record``'s slot (it started or stopped serving)."""
        card = record.card
        for skill in card.skills:
            self._skills.stale(skill.name)
        self._purposes.stale(card.purpose)
        for item in card.labels.items():
            self._labels.stale(item)

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
            self._skill_words.append(())
            self._grow(record.slot + 1)
        self._slots[record.slot] = record
        self.versions[record.version_id] = record
        card, slot = record.card, record.slot
        # Serialized once here (~4 µs), so that a BASIC answer parses it instead of copying and stripping the
        # card per answer (~6 µs), and its memory is compact (~0.4 KB a card).
        record.basic_card = basic_card(card).SerializeToString()
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
        skill_words = []
        for skill in card.skills:
            name_tokens = tokenize(skill.name)
            text_tokens = tokenize(f"{skill.description} {' '.join(skill.tags)}")
            tokens += name_tokens * _NAME_WEIGHT + text_tokens
            skill_words.append((skill.name, f" {' '.join(dict.fromkeys(name_tokens + text_tokens))} "))
        self._skill_words[slot] = tuple(skill_words)
        self._text.set(slot, tokens)
        return record

    def _refresh_slot(self, record: VersionRecord) -> None:
        serving = [i.load for i in record.instances.values() if i.state == SERVING]
        slot = record.slot
        before = int(self._serving[slot])
        if before != len(serving):
            self._serving[slot] = len(serving)
            self._multi_instance_slots += (len(serving) > 1) - (before > 1)
            self._agent_serving[self._agent_of[slot]] += len(serving) - before
            self._epoch += 1
            if (before > 0) != bool(serving):
                self._stale(record)
        lowest = min(serving) if serving else 0.0
        self._min_load[slot] = lowest
        self._boost[slot] = 1.0 - 0.2 * lowest if serving else 0.0

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

    def prepare(self, step: Callable[[], None] = lambda: None) -> None:
        """Finish a bulk load: build the structures queries would otherwise build on first use (``step`` is called
        between small pieces of the work)."""
        self._text.prepare(len(self._slots), step)
        warm_scanner()

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

    async def prepare_visibility(self, query: DiscoveryQuery) -> None:
        """Evaluate the query's new visibility patterns before ``discover``, on a worker thread when that means
        more than a few names (INVALID_ARGUMENT when it would take too long)."""
        if query.patterns:
            await self._visibility.prepare(query.patterns)

    def _visible_count(self, query: DiscoveryQuery, visible: npt.NDArray[np.bool_]) -> int:
        key = (query.names, tuple(p.pattern for p in query.patterns))
        cached = self._visible_counts.get(key)
        if cached is not None and cached[0] == self._epoch:
            return cached[1]
        count = int(self._agent_serving[: len(visible)][visible].sum())
        if len(self._visible_counts) > _VISIBILITY_MEMO_SIZE:
            self._visible_counts.clear()
        self._visible_counts[key] = (self._epoch, count)
        return count

    def _visibility_reason(self, query: DiscoveryQuery, key: str) -> str:
        if not query.has_visibility_scope:
            return "visible: no visibility scope"
        if key in query.names:
            return f"visible: named {key}"
        pattern = self._visibility.matched_by(query.patterns, self._agent_ix[key], key)
        return f"visible: {key} matches {echo(pattern)}"

    def _allowed_versions(self, constraint: SpecifierSet) -> npt.NDArray[np.int64]:
        return np.array(
            [i for i, v in enumerate(self._version_strings) if constraint.contains(v, prereleases=True)],
            dtype=np.int64,
        )

    def discover(self, query: DiscoveryQuery, policies: Mapping[str, RoutePolicy]) -> DiscoveryResult:
        """Filter by visibility then characteristics, rank, route to one version per agent, best first."""
        size = len(self._slots)
        visible: npt.NDArray[np.bool_] | None = None
        if query.has_visibility_scope:
            visible = self._visibility.visible(query.names, query.patterns)
            visible_count = self._visible_count(query, visible)
        else:
            visible_count = self.serving_instances

        keyed = [
            (sets, key)
            for sets, key in (
                (self._skills, query.skill),
                (self._purposes, query.purpose),
                *((self._labels, item) for item in query.labels),
            )
            if key
        ]
        terms = tokenize(query.intent) if query.intent else []
        if not terms and query.intent.strip():  # an intent with no word any card can hold matches none
            return DiscoveryResult([], visible_count, 0)
        if terms and not (
            keyed or query.required_policies or query.version_constraint is not None or visible is not None
        ):
            plan = self._text.plan(terms, size)
            if plan is None:
                return DiscoveryResult([], visible_count, 0)
            return self._rank_intent_only(query, plan, terms, visible_count, policies)
        relevance = self._text.scores(terms, size) if terms else None
        if terms and relevance is None:
            return DiscoveryResult([], visible_count, 0)

        # Live candidates; with one key, its cached live view brings policy-mask word 0 along (no gather).
        mask0: npt.NDArray[np.uint64] | None = None
        if len(keyed) == 1:
            sets, key = keyed[0]
            candidates, mask0 = sets.live(key, self._serving, self._masks[0] if self._masks else None)
        else:
            if keyed:
                candidates = keyed[0][0].array(keyed[0][1])
                for sets, key in keyed[1:]:
                    candidates = np.intersect1d(candidates, sets.array(key), assume_unique=True)
            else:
                candidates = (
                    np.flatnonzero(self._serving[:size]) if relevance is None else np.flatnonzero(relevance)
                )
            candidates = candidates[self._serving[candidates] > 0]
        if query.required_policies:
            for word, bits in self._required_masks(query.required_policies).items():
                if bits is None:
                    return DiscoveryResult([], visible_count, 0)
                words = mask0 if word == 0 and mask0 is not None else self._masks[word][candidates]
                candidates = candidates[(words & bits) == bits]
                mask0 = None  # no longer aligned with the candidates
        if relevance is not None:
            candidates = candidates[relevance[candidates] > 0]
        if query.version_constraint is not None:
            allowed = self._allowed_versions(query.version_constraint)
            candidates = candidates[np.isin(self._version_of[candidates], allowed)]
        if visible is not None and len(candidates):
            candidates = candidates[visible[self._agent_of[candidates]]]
        if not len(candidates):
            return DiscoveryResult([], visible_count, 0)
        # One SERVING instance per live slot (the usual case): counting slots is counting instances.
        matched_count = (
            int(self._serving[candidates].sum()) if self._multi_instance_slots else len(candidates)
        )
        scores = self._boost[candidates]
        if relevance is not None:
            scores = scores * relevance[candidates]
        answer = self._route(query, candidates, scores, relevance, terms, policies)
        return DiscoveryResult(answer, visible_count, matched_count)

    def _rank_intent_only(
        self,
        query: DiscoveryQuery,
        plan: Bm25Plan,
        terms: list[str],
        visible_count: int,
        policies: Mapping[str, RoutePolicy],
    ) -> DiscoveryResult:
        """Free text and nothing else: rank every live card in one compiled pass over the slots.

        The pass scores each slot (BM25 times boost), counts the matches and keeps the best ``4 * max_results``
        slots (a small heap), writing nothing of the index's size. A routed agent's other versions are scored on
        demand. When agents repeat so much that those slots hold fewer than ``max_results`` agents, the pass runs
        again keeping 4x as many.
        """
        size = len(self._slots)
        boost = self._boost
        serving = self._serving if self._multi_instance_slots else None
        wanted = query.max_results * 4
        while True:
            positive, matched_count, candidates, scores = plan.top(size, boost, serving, wanted)
            if not matched_count:
                return DiscoveryResult([], visible_count, 0)
            answer = self._route(query, candidates, scores, None, terms, policies, plan)
            if len(answer) >= query.max_results or len(candidates) >= positive:
                return DiscoveryResult(answer, visible_count, matched_count)
            wanted *= 4

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
        plan: Bm25Plan | None = None,
    ) -> list[Candidate]:
        """One candidate per agent: best slots first, each agent routed among its matching versions.

        With ``plan`` (intent-only queries; ``relevance`` is then ``None``), ``candidates`` are the best slots of
        every live one and a routed agent's versions are scored by the plan (BM25 times boost, 0 when not matched),
        below the candidates too.

        The agents are picked first (slot, score and routing reason each); their reasons, matched terms and
        instances are then worked out for all of them at once (one array gather per intent term, not a
        postings lookup per term and answer).
        """
        wanted = query.max_results
        total = len(candidates)
        dense: npt.NDArray[np.float32] | None = None  # score per slot, NaN when not matched; built on demand
        agent_slots, agent_keys, slots_of = self._agent_slots, self._agent_keys, self._slots
        take = min(total, wanted * 4)
        # Per picked agent: the agent, the slot routed to, that slot's score, and the routing reason (or None).
        picked: list[tuple[int, int, float, str | None]] = []
        seen_agents: set[int] = set()
        while True:
            top = np.argpartition(-scores, take - 1)[:take] if take < total else np.arange(total)
            top = top[np.argsort(-scores[top], kind="stable")]
            slots = candidates[top]
            for slot, score, agent in zip(
                slots.tolist(), scores[top].tolist(), self._agent_of[slots].tolist(), strict=True
            ):
                if agent in seen_agents:
                    continue
                seen_agents.add(agent)
                family = agent_slots[agent]
                if len(family) == 1 and (not policies or agent_keys[agent] not in policies):
                    picked.append((agent, slot, score, None))
                else:
                    key = agent_keys[agent]
                    if plan is not None:
                        ranked = plan.ranked_at(np.array(family, dtype=np.int64), self._boost).tolist()
                        score_of = {s: v for s, v in zip(family, ranked, strict=True) if v > 0}
                    else:
                        if dense is None:
                            dense = np.full(len(slots_of), np.nan, dtype=np.float32)
                            dense[candidates] = scores
                        values = dense[np.array(family, dtype=np.intp)].tolist()
                        score_of = {s: v for s, v in zip(family, values, strict=True) if not np.isnan(v)}
                    by_version = {slots_of[s].version: s for s in score_of}
                    version, why = choose_version(policies.get(key), list(by_version), query.routing_key)
                    routed = by_version[version]
                    picked.append((agent, routed, score_of[routed], why))
                if len(picked) == wanted:
                    break
            if len(picked) == wanted or take >= total:
                break
            take = min(total, take * 4)
        answer = self._candidates(query, picked, relevance, plan, terms)
        answer.sort(key=lambda c: -c.score)
        return answer

    def _candidates(
        self,
        query: DiscoveryQuery,
        picked: list[tuple[int, int, float, str | None]],
        relevance: npt.NDArray[np.float32] | None,
        plan: Bm25Plan | None,
        terms: list[str],
    ) -> list[Candidate]:
        """The answers for the picked (agent, slot, score, routing reason)s, in that order, with their reasons."""
        if not picked:
            return []
        slots_of, skill_words, agent_keys = self._slots, self._skill_words, self._agent_keys
        chosen = [slot for _, slot, _, _ in picked]
        fixed = list(_query_reasons(query))
        if query.version_constraint is not None:
            satisfies = f" satisfies {_cut(str(query.version_constraint))}"
        hits: list[list[str]] | None = None
        intent_reasons: list[str] = []
        if terms and (relevance is not None or plan is not None):
            hits = self._text.matched_each(chosen, terms)
            at = np.array(chosen, dtype=np.intp)
            # BM25 itself: with a plan, the picked (ranked, float32) scores divided by the boost they were made with.
            if plan is None:
                values = relevance[at].tolist()  # type: ignore[index]
            else:
                ranked = np.array([score for _, _, score, _ in picked], dtype=np.float32)
                values = (ranked / self._boost[at]).tolist()
            intent_reasons = [
                f"intent matched: {_listed(hit)} (relevance {value:.2f})"
                for hit, value in zip(hits, values, strict=True)
            ]
            padded = {term: f" {term} " for term in terms}
        routing_key = query.routing_key
        answer = []
        visible = None if query.has_visibility_scope else "visible: no visibility scope"
        for position, (agent, slot, score, why) in enumerate(picked):
            record = slots_of[slot]
            reasons = [visible or self._visibility_reason(query, agent_keys[agent])]
            if why is not None:
                reasons.append(why)
            reasons += fixed
            if query.version_constraint is not None:
                reasons.append(f"version {record.version}{satisfies}")
            matched_skill = query.skill
            if hits is not None:
                reasons.append(intent_reasons[position])
                if not matched_skill:
                    matched_skill = _best_skill(skill_words[slot], [padded[t] for t in hits[position]])
            instance = self._pick_instance(record, routing_key)
            reasons.append(f"instance {instance.endpoint} SERVING, load {instance.load:.2f}")
            answer.append(Candidate(instance, record, round(score, 6), tuple(reasons), matched_skill))
        return answer

    @staticmethod
    def _pick_instance(record: VersionRecord, routing_key: str) -> InstanceRecord:
        instances = record.instances
        if len(instances) == 1:  # the slot is live, so its only instance is the SERVING one
            return next(iter(instances.values()))
        serving = [i for i in instances.values() if i.state == SERVING]
        if len(serving) == 1:
            return serving[0]

        def spread(instance: InstanceRecord) -> bytes:
            return hashlib.blake2b(
                f"{routing_key}\x00{instance.instance_id}".encode(), digest_size=4
            ).digest()

        return min(serving, key=lambda i: (round(i.load, 2), spread(i)))


def _query_reasons(query: DiscoveryQuery) -> tuple[str, ...]:
    """The reasons every candidate of ``query`` shares (each passed the same characteristics filters)."""
    reasons = []
    if query.purpose:
        reasons.append(f"purpose = {_cut(query.purpose)}")  # the purpose filter is an exact match
    if query.required_policies:
        reasons.append("policies hold: " + _listed(query.required_policies))
    if query.skill:
        reasons.append(f"skill: {_cut(query.skill)}")
    if query.labels:
        reasons.append("labels match: " + _listed([f"{k}={v}" for k, v in query.labels]))
    return tuple(reasons)


# A reason repeats caller input (a constraint, policies, labels): each is cut to about this many characters.
_REASON_ECHO = 160


def _cut(text: str) -> str:
    return text if len(text) <= _REASON_ECHO else f"{text[:_REASON_ECHO]}… ({len(text)} characters)"


def _listed(items: Iterable[str]) -> str:
    """``items`` joined by commas, cut after about ``_REASON_ECHO`` characters with how many were left out."""
    items = list(items)
    shown: list[str] = []
    length = 0
    for item in items:
        if length + len(item) > _REASON_ECHO and shown:
            return f"{', '.join(shown)}, … ({len(items) - len(shown)} more)"
        shown.append(_cut(item))
        length += len(item) + 2
    return ", ".join(shown)


def _best_skill(skills: tuple[tuple[str, str], ...], padded: list[str]) -> str:
    """The skill whose text shares most (distinct) words with the intent; the first such skill on a tie.

    ``padded`` holds the matched terms each with a space on both sides, as the skills' word strings do.
    """
    if len(skills) == 1:  # the usual case: that skill, when it has any of the words
        name, words = skills[0]
        for term in padded:
            if term in words:
                return name
        return ""
    best, best_hits = "", 0
    for name, words in skills:
        hits = 0
        for term in padded:
            if term in words:
                hits += 1
        if hits > best_hits:
            best, best_hits = name, hits
    return best
