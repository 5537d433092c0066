"""Discovery answers against a straightforward reference: every live slot scored, filtered, sorted, routed.

The index prunes (a sampled score threshold for intent-only queries, cached live views, memoised visibility);
the reference does none of it, so a pruned-away true top-k result, a wrong score, count or reason fails them.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import numpy as np
import pytest

from agentmesh.services.registry import text as text_module
from agentmesh.services.registry.discovery import AgentIndex
from agentmesh.services.registry.model import DiscoveryQuery, DiscoveryResult, InstanceRecord, VersionRecord
from agentmesh.services.registry.routing import choose_version
from agentmesh.services.registry.text import TextIndex, tokenize
from agentmesh.services.registry.validation import compile_patterns, parse_specifier, parse_version
from agentmesh.v1 import agent_pb2

SERVING = agent_pb2.SERVING_STATE_SERVING
DRAINING = agent_pb2.SERVING_STATE_DRAINING
# Few words, Zipf-like: the first ones are in most cards (dense terms), the last ones in a few (rare terms).
WORDS = [f"w{i:02d}" for i in range(80)]
POLICIES = ["pii:allowed", "region:eu", "region:us", "tier:gold", "audit:strict"]
PURPOSES = ["triage", "billing", "shipping", "search"]
SKILLS = ["classify_ticket", "refund_order", "track_parcel", "find_document", "quote_price"]
_RELEVANCE = re.compile(r" \(relevance (-?[0-9.]+)\)$")


def _sentence(rng: random.Random, low: int, high: int) -> str:
    weights = [1.0 / (rank + 1) for rank in range(len(WORDS))]
    return " ".join(rng.choices(WORDS, weights, k=rng.randint(low, high)))


def _card(rng: random.Random, name: str, version: str) -> agent_pb2.AgentCard:
    card = agent_pb2.AgentCard(
        name=name,
        namespace=f"ns-{rng.randint(0, 5)}" if not name.startswith("multi") else "ns-multi",
        version=version,
        purpose=rng.choice(PURPOSES),
        description=_sentence(rng, 3, 14),
        policies=sorted(rng.sample(POLICIES, rng.randint(0, 3))),
        labels={"team": f"t{rng.randint(0, 3)}"},
        endpoint="10.0.0.1:7000",
        spiffe_id=f"spiffe://agentmesh.test/agent/{name}",
    )
    for skill in rng.sample(SKILLS, rng.randint(1, 2)):
        card.skills.add(name=skill, description=_sentence(rng, 1, 5), tags=[rng.choice(WORDS)])
    return card


class _World:
    """An index and what the reference needs: every version record and its instances."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.index = AgentIndex()
        self.next_id = 0

    def add(self, name: str, version: str, instances: int = 1) -> VersionRecord:
        self.next_id += 1
        card = _card(self.rng, name, version)
        record = self.index.put_version(
            VersionRecord(self.next_id, card, parse_version(version), f"h{self.next_id}")
        )
        for n in range(instances):
            self.instance(record, f"i{self.next_id}-{n}")
        return record

    def instance(self, record: VersionRecord, instance_id: str) -> None:
        self.index.put_instance(
            InstanceRecord(
                instance_id,
                f"lease-{instance_id}",
                record.version_id,
                f"10.1.{record.slot}.{len(record.instances)}:7000",
                SERVING,
                round(self.rng.choice([0.0, 0.0, 0.1, 0.25, 0.5, 1.0]), 2),
                10.0,
                "",
                0.0,
                0.0,
            )
        )

    def mutate(self, count: int) -> None:
        """Re-describe cards, drain, revive, re-load, deregister and register, at random."""
        rng, index = self.rng, self.index
        for _ in range(count):
            action = rng.random()
            records = list(index.versions.values())
            record = rng.choice(records)
            if action < 0.25:  # a new card for the same version (its instances stay)
                card = _card(rng, record.card.name, record.card.version)
                card.namespace = record.card.namespace
                index.put_version(VersionRecord(record.version_id, card, record.parsed_version, "x"))
            elif action < 0.45 and record.instances:
                instance = rng.choice(list(record.instances.values()))
                index.set_state(instance.instance_id, DRAINING if instance.state == SERVING else SERVING)
            elif action < 0.65 and record.instances:
                instance = rng.choice(list(record.instances.values()))
                index.set_load(instance, round(rng.random(), 2))
            elif action < 0.8 and record.instances:
                index.remove_instance(rng.choice(list(record.instances)))
            else:
                self.add(f"new-{self.next_id}", "1.0.0")


def _reference(index: AgentIndex, query: DiscoveryQuery) -> DiscoveryResult:
    """Discovery done the slow way: every slot checked and scored, then sorted and routed among each agent's
    matching versions. Every agent, in the order of its best slot's score (each with that score last), not
    only the first ``max_results``: which agents tie at the cut is checked apart."""
    terms = tokenize(query.intent) if query.intent else []
    visible_agents = {
        r.key
        for r in index.versions.values()
        if not query.has_visibility_scope
        or r.key in query.names
        or any(p.fullmatch(r.key) for p in query.patterns)
    }
    visible_count = sum(
        i.state == SERVING
        for r in index.versions.values()
        if r.key in visible_agents
        for i in r.instances.values()
    )
    scored: dict[int, tuple[float, float]] = {}  # slot -> (score, relevance)
    matched = 0
    # Every slot's BM25 score, as the index's own weights give it (their float32 rounding included).
    every = index._text.scores(terms, len(index._slots)) if terms else None
    every = None if every is None else every.copy()
    for record in index.versions.values():
        card = record.card
        serving = [i for i in record.instances.values() if i.state == SERVING]
        if not serving or record.key not in visible_agents:
            continue
        if query.skill and query.skill not in [s.name for s in card.skills]:
            continue
        if query.purpose and card.purpose != query.purpose:
            continue
        if not set(query.required_policies) <= set(card.policies):
            continue
        if any(card.labels.get(k) != v for k, v in query.labels):
            continue
        if query.version_constraint is not None and not query.version_constraint.contains(
            card.version, prereleases=True
        ):
            continue
        boost = np.float32(1.0 - 0.2 * min(i.load for i in serving))
        relevance = np.float32(1.0)
        if terms:
            relevance = np.float32(0.0) if every is None else every[record.slot]
            if not relevance > 0:
                continue
        scored[record.slot] = (float(relevance * boost if terms else boost), float(relevance))
        matched += len(serving)
    by_slot = {r.slot: r for r in index.versions.values()}
    answer: list[tuple[str, str, float, tuple[str, ...], float]] = []
    seen: set[str] = set()
    for slot in sorted(scored, key=lambda s: (-scored[s][0], s)):
        record = by_slot[slot]
        best = round(scored[slot][0], 6)
        if record.key in seen:
            continue
        seen.add(record.key)
        reasons = [
            "visible: no visibility scope"
            if not query.has_visibility_scope
            else f"visible: {record.key} matches {query.patterns[0].pattern!r}"
        ]
        family = [r for r in index.version_records(*record.key.split("/")) if r.slot in scored]
        if len(index.version_records(*record.key.split("/"))) > 1:
            version, why = choose_version(None, [r.card.version for r in family], query.routing_key)
            record = next(r for r in family if r.card.version == version)
            reasons.append(why)
        score, relevance = scored[record.slot]
        if query.purpose:
            reasons.append(f"purpose = {query.purpose}")
        if query.required_policies:
            reasons.append("policies hold: " + ", ".join(query.required_policies))
        if query.skill:
            reasons.append(f"skill: {query.skill}")
        if query.version_constraint is not None:
            reasons.append(f"version {record.card.version} satisfies {query.version_constraint}")
        if terms:
            words = set(tokenize(f"{record.card.name} {record.card.purpose} {record.card.description}"))
            for skill in record.card.skills:
                words |= set(tokenize(f"{skill.name} {skill.description} {' '.join(skill.tags)}"))
            hit = [t for t in dict.fromkeys(terms) if t in words]
            reasons.append(f"intent matched: {', '.join(hit)} (relevance {relevance:.2f})")
        answer.append((record.key, record.card.version, round(score, 6), tuple(reasons), best))
    return DiscoveryResult(answer, visible_count, matched if scored else 0)  # type: ignore[arg-type]


def _queries(rng: random.Random, count: int) -> list[DiscoveryQuery]:
    out = []
    for _ in range(count):
        kind = rng.random()
        intent = _sentence(rng, 1, 5) if kind < 0.8 else ""
        if rng.random() < 0.4:  # a rare word: the pruned path's case
            intent += " " + rng.choice(WORDS[40:])
        filters: dict[str, object] = {}
        if kind > 0.5:
            choice = rng.randint(0, 4)
            if choice == 0:
                filters["patterns"] = compile_patterns([f"ns-[{rng.randint(0, 2)}-{rng.randint(3, 5)}]/.*"])
            elif choice == 1:
                filters["purpose"] = rng.choice(PURPOSES)
            elif choice == 2:
                filters["required_policies"] = tuple(rng.sample(POLICIES, rng.randint(1, 2)))
            elif choice == 3:
                filters["skill"] = rng.choice(SKILLS)
            else:
                filters["version_constraint"] = parse_specifier(">=1.1")
        out.append(
            DiscoveryQuery(intent=intent.strip(), max_results=rng.choice([1, 3, 10]), **filters)  # type: ignore[arg-type]
        )
    return out


def _answer(result: DiscoveryResult) -> tuple[list[tuple[str, str, float, tuple[str, ...]]], int, int]:
    return (
        [
            (c.version.key, c.version.card.version, c.score, c.reasons[:-1]) for c in result.candidates
        ],  # last: instance
        result.visible_count,
        result.matched_count,
    )


def _same(got: DiscoveryResult, want: DiscoveryResult, max_results: int) -> None:
    """The first ``max_results`` agents by best slot (any of those tied at the cut), best first, each with the
    same version, score and reasons as the reference's; the same counts."""
    answer, visible, matched = _answer(got)
    every: list[tuple[str, str, float, tuple[str, ...], float]] = want.candidates  # type: ignore[assignment]
    assert (visible, matched) == (want.visible_count, want.matched_count)
    head = every[:max_results]
    cut = head[-1][4] if len(every) > max_results else -1.0
    required = {w[0] for w in head if w[4] > cut}
    allowed = required | {w[0] for w in every if w[4] == cut}
    keys = {m[0] for m in answer}
    assert len(answer) == len(head) == len(keys) and required <= keys <= allowed
    assert [m[2] for m in answer] == sorted((m[2] for m in answer), reverse=True)
    by_agent = {w[0]: w for w in every}
    for mine in answer:
        theirs = by_agent[mine[0]]
        assert mine[:3] == theirs[:3]
        # The index shows the relevance it ranked by (ranked / boost): the last printed digit may move.
        strip = [_RELEVANCE.sub("", r) for r in mine[3]]
        assert strip == [_RELEVANCE.sub("", r) for r in theirs[3]]
        for r_mine, r_theirs in zip(mine[3], theirs[3], strict=True):
            a, b = _RELEVANCE.search(r_mine), _RELEVANCE.search(r_theirs)
            assert (a is None) == (b is None)
            if a and b:
                assert abs(float(a.group(1)) - float(b.group(1))) <= 0.011


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_discovery_equals_the_reference_through_mutations(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "DENSE_MIN", 40)  # dense (common) terms in a test-sized index
    calls = Counter[str]()
    intent_only = AgentIndex._rank_intent_only

    def counting(self: AgentIndex, *args: object) -> object:
        calls["intent only"] += 1
        return intent_only(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(AgentIndex, "_rank_intent_only", counting)
    rng = random.Random(seed)
    world = _World(rng)
    for n in range(300):
        world.add(f"agent-{n:03d}", f"1.{rng.randint(0, 3)}.0")
    for n in range(15):  # agents with several versions, routed to the highest matching one
        for minor in range(rng.randint(2, 3)):
            world.add(f"multi-{n}", f"1.{minor}.0")
    world.index.prepare()
    for round_ in range(5):
        for query in _queries(rng, 50):
            _same(world.index.discover(query, {}), _reference(world.index, query), query.max_results)
        world.mutate(40)
        if round_ == 2:  # from here on some versions have two SERVING instances
            for record in rng.sample(list(world.index.versions.values()), 10):
                world.instance(record, f"extra-{record.version_id}")
    assert calls["intent only"] >= 100  # the thresholded intent-only path, besides the filtered one


def test_scores_are_textbook_bm25_after_a_bulk_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "DENSE_MIN", 10)
    rng = random.Random(9)
    docs = {slot: tokenize(_sentence(rng, 2, 20)) for slot in range(300)}
    text = TextIndex()
    for slot, tokens in docs.items():
        text.set(slot, tokens)
    text.prepare(300)
    average = sum(map(len, docs.values())) / len(docs)
    for _ in range(30):
        terms = tokenize(_sentence(rng, 1, 4))
        scores = text.scores(terms, 300)
        for slot, tokens in docs.items():
            counts, want = Counter(tokens), 0.0
            for term in dict.fromkeys(terms):
                df = sum(term in d for d in docs.values())
                if not counts[term]:
                    continue
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                tf = counts[term]
                want += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(tokens) / average))
            got = 0.0 if scores is None else float(scores[slot])
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
