"""How the registry builds the answers of a discovery: matched terms, matched skill, instance choice and protos.

Each shortcut taken per answer (matched terms read from dense weights for every answer at once, the BASIC card
serialized when the index takes a version, an instance built straight into the response the first time it is
answered, the only instance of a slot remembered, a held-back first dense term in BM25) against the plain
computation it replaces, through changes of cards, instances, states, loads and leases.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from agentmesh.services.registry import text as text_module
from agentmesh.services.registry.discovery import AgentIndex, _best_skill
from agentmesh.services.registry.model import (
    Candidate,
    DiscoveryResult,
    InstanceRecord,
    VersionRecord,
    basic_card,
)
from agentmesh.services.registry.servicer import InstanceProtos, discovery_response
from agentmesh.services.registry.text import TextIndex
from agentmesh.services.registry.validation import parse_version
from agentmesh.v1 import agent_pb2, registry_pb2

SERVING = agent_pb2.SERVING_STATE_SERVING
DRAINING = agent_pb2.SERVING_STATE_DRAINING
WORDS = [f"w{i:02d}" for i in range(40)]


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    weights = [1.0 / (rank + 1) for rank in range(len(WORDS))]
    return rng.choices(WORDS, weights, k=rng.randint(low, high))


def test_matched_each_agrees_with_matched_through_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "DENSE_MIN", 20)  # the common words get dense arrays
    rng = random.Random(4)
    text = TextIndex()
    for slot in range(400):
        text.set(slot, _words(rng, 2, 12))
    text.prepare(400)
    assert text._dense  # both kinds of term are exercised
    for round_ in range(6):
        for _ in range(20):
            slots = rng.sample(range(400 + 10 * round_), 10)
            terms = [*_words(rng, 1, 6), "absent"]
            assert text.matched_each(slots, terms) == [text.matched(s, terms) for s in slots]
        for _ in range(30):  # re-describe, forget and add documents
            action = rng.random()
            slot = rng.randrange(400 + 10 * round_)
            if action < 0.5:
                text.set(slot, _words(rng, 2, 12))
            elif action < 0.8:
                text.remove(slot)
        for slot in range(400 + 10 * round_, 410 + 10 * round_):
            text.set(slot, _words(rng, 2, 12))


def test_scores_add_the_terms_in_query_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every term's float32 products added in query order, dense and sparse terms mixed: bit for bit."""
    monkeypatch.setattr(text_module, "DENSE_MIN", 20)
    rng = random.Random(8)
    text = TextIndex()
    for slot in range(300):
        text.set(slot, _words(rng, 2, 12))
    text.prepare(300)
    for _ in range(40):
        terms = list(dict.fromkeys(_words(rng, 1, 5)))
        want = np.zeros(300, dtype=np.float32)
        for term in terms:
            if term not in text._postings:
                continue
            df = len(text._postings[term])
            idf = np.float32(math.log(1.0 + (300 - df + 0.5) / (df + 0.5)))
            if term in text._dense:
                want = want + text._dense[term][:300] * idf
            else:
                slots, weight = text._array(term)
                want[slots] += weight * idf
        got = text.scores(terms, 300)
        assert got is not None
        assert np.array_equal(got, want)


def test_best_skill_is_the_first_skill_sharing_most_words() -> None:
    rng = random.Random(2)

    def plain(skills: tuple[tuple[str, str], ...], hit: list[str]) -> str:
        best, best_hits = "", 0
        for name, words in skills:
            hits = sum(term in words.split() for term in hit)
            if hits > best_hits:
                best, best_hits = name, hits
        return best

    for _ in range(500):
        skills = tuple(
            (f"skill{n}", f" {' '.join(dict.fromkeys(_words(rng, 1, 6)))} ") for n in range(rng.randint(1, 3))
        )
        hit = list(dict.fromkeys(_words(rng, 0, 4)))
        assert _best_skill(skills, [f" {t} " for t in hit]) == plain(skills, hit)


def _card(name: str, version: str, rng: random.Random) -> agent_pb2.AgentCard:
    card = agent_pb2.AgentCard(
        name=name,
        namespace="ns",
        version=version,
        purpose="triage",
        description=" ".join(_words(rng, 3, 9)),
        policies=["pii:allowed"],
        labels={"team": f"t{rng.randint(0, 3)}"},
        spiffe_id=f"spiffe://agentmesh.test/agent/{name}",
    )
    for n in range(rng.randint(1, 2)):
        skill = card.skills.add(name=f"skill_{n}", description=" ".join(_words(rng, 1, 4)), tags=["x"])
        skill.input_schema.update({"type": "object", "n": n})
        skill.output_schema.update({"type": "object"})
    return card


def _instance(version_id: int, instance_id: str, rng: random.Random) -> InstanceRecord:
    return InstanceRecord(
        instance_id,
        f"lease-{instance_id}",
        version_id,
        f"10.0.{version_id}.{rng.randint(1, 250)}:7000",
        SERVING,
        round(rng.random(), 2),
        10.0,
        "",
        1_700_000_000.25,
        1_700_000_015.5,
    )


def _reference_instance(
    instance: InstanceRecord, record: VersionRecord, basic: bool
) -> registry_pb2.AgentInstance:
    """The AgentInstance built the plain way: the whole card copied, its endpoint set, BASIC fields cleared."""
    proto = registry_pb2.AgentInstance(
        instance_id=instance.instance_id, state=instance.state, load=instance.load
    )  # type: ignore[arg-type]
    proto.card.CopyFrom(record.card)
    proto.card.endpoint = instance.endpoint
    if basic:
        proto.card.ClearField("description")
        for skill in proto.card.skills:
            skill.ClearField("description")
            skill.ClearField("input_schema")
            skill.ClearField("output_schema")
    proto.register_time.FromNanoseconds(int(instance.registered_at * 1e9))
    proto.lease_expire_time.FromNanoseconds(int(instance.expires_at * 1e9))
    return proto


@pytest.mark.parametrize("basic", [False, True])
def test_answered_instances_are_current_through_changes(basic: bool) -> None:
    """First, second and later answers of an instance (built in place, then kept, then copied), and the BASIC
    card serialized by the index, all equal the plain build after card, state, load and lease changes."""
    rng = random.Random(6)
    index = AgentIndex()
    records = [
        index.put_version(VersionRecord(v, _card(f"a{v}", "1.0.0", rng), parse_version("1.0.0"), "h"))
        for v in range(1, 9)
    ]
    for record in records:
        index.put_instance(_instance(record.version_id, f"i{record.version_id}", rng))
    records.append(
        VersionRecord(99, _card("loose", "1.0.0", rng), parse_version("1.0.0"), "h")
    )  # not indexed
    assert records[-1].basic_card is None
    records[-1].instances["loose"] = _instance(99, "loose", rng)
    protos = InstanceProtos(capacity=4, basic=basic)  # small: entries and sightings are evicted too
    for _ in range(200):
        chosen = rng.sample(records, 3)
        result = DiscoveryResult(
            [Candidate(next(iter(r.instances.values())), r, 1.0, ("why",), "skill_0") for r in chosen],
            3,
            3,
        )
        response = discovery_response(result, protos)
        for got, record in zip(response.candidates, chosen, strict=True):
            instance = next(iter(record.instances.values()))
            assert got.instance == _reference_instance(instance, record, basic)
            assert got.reasons == ["why"] and got.matched_skill == "skill_0"
        action = rng.random()
        record = rng.choice(records[:-1])
        instance = next(iter(record.instances.values()))
        if action < 0.2:  # a new card for the same version: its BASIC view follows
            fresh = index.put_version(
                VersionRecord(
                    record.version_id, _card(record.card.name, "1.0.0", rng), record.parsed_version, "x"
                )
            )
            records[records.index(record)] = fresh
            assert fresh.basic_card == basic_card(fresh.card).SerializeToString()
        elif action < 0.4:
            index.set_state(instance.instance_id, DRAINING if instance.state == SERVING else SERVING)
        elif action < 0.6:
            index.set_load(instance, round(rng.random(), 2))
        elif action < 0.8:
            instance.expires_at += 7.25
        else:  # the instance re-registers: a new record under the same id
            index.put_instance(_instance(record.version_id, instance.instance_id, rng))


def test_the_only_instance_of_a_slot_is_the_one_picked() -> None:
    rng = random.Random(3)
    index = AgentIndex()
    records = [
        index.put_version(VersionRecord(v, _card(f"a{v}", "1.0.0", rng), parse_version("1.0.0"), "h"))
        for v in range(1, 6)
    ]
    live: dict[str, InstanceRecord] = {}
    for step in range(300):
        record = rng.choice(records)
        if rng.random() < 0.55 or not record.instances:
            instance = _instance(record.version_id, f"i{step % 17}", rng)
            previous = live.get(instance.instance_id)
            if previous is not None and previous.version_id != record.version_id:
                index.remove_instance(instance.instance_id)
            index.put_instance(instance)
            live[instance.instance_id] = instance
        else:
            gone = rng.choice(list(record.instances))
            index.remove_instance(gone)
            live.pop(gone, None)
        if rng.random() < 0.1:  # a new card for the version keeps its instances
            index.put_version(
                VersionRecord(
                    record.version_id, _card(record.card.name, "1.0.0", rng), record.parsed_version, "x"
                )
            )
            records = [index.versions[r.version_id] for r in records]
        for each in records:
            if len(each.instances) == 1:
                assert AgentIndex._pick_instance(each, "key") is next(iter(each.instances.values()))
