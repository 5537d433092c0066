"""The registry's compiled BM25 kernels against the plain numpy computation, bit for bit.

One pass keeps the best slots (BM25 times boost), counts the matches and instances, and scores chosen slots on
demand; each must give exactly what numpy gives over a dense score array: the same float32 sums in query order,
the same products, the same best slots (a tie by lower slot), through changes to the index.
"""

from __future__ import annotations

import math
import random

import numpy as np
import numpy.typing as npt
import pytest

from agentmesh.services.registry import text as text_module
from agentmesh.services.registry.discovery import AgentIndex
from agentmesh.services.registry.model import DiscoveryQuery, InstanceRecord, VersionRecord
from agentmesh.services.registry.text import TextIndex
from agentmesh.services.registry.validation import parse_version
from agentmesh.v1 import agent_pb2

WORDS = [f"w{i:02d}" for i in range(40)]


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    weights = [1.0 / (rank + 1) for rank in range(len(WORDS))]
    return rng.choices(WORDS, weights, k=rng.randint(low, high))


def _plain_scores(text: TextIndex, terms: list[str], size: int) -> npt.NDArray[np.float32]:
    """BM25 per slot as numpy computes it: each term's float32 products added in query order."""
    total = max(1, len(text._doc_len))
    want = np.zeros(size, dtype=np.float32)
    for term in dict.fromkeys(terms):
        if term not in text._postings:
            continue
        df = len(text._postings[term])
        idf = np.float32(math.log(1.0 + (total - df + 0.5) / (df + 0.5)))
        if term in text._dense:
            want = want + text._dense[term][:size] * idf
        else:
            slots, weight = text._array(term)
            want[slots] += weight * idf
    return want


def test_one_pass_ranking_equals_numpy_through_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "DENSE_MIN", 20)  # the common words get dense arrays
    rng = random.Random(12)
    text = TextIndex()
    size = 3000  # several kernel blocks
    for slot in range(size):
        text.set(slot, _words(rng, 2, 14))
    text.prepare(size)
    dense_terms = sorted(text._dense, key=lambda t: -len(text._postings[t]))
    assert len(dense_terms) > text_module.kernels().MAX_DENSE  # the overflow to sparse runs is exercised
    kinds_seen: set[str] = set()
    for _ in range(4):
        boost = np.where(
            np.array([rng.random() < 0.15 for _ in range(size)]),
            np.float32(0.0),
            np.array(
                [1.0 - 0.2 * rng.choice([0.0, 0.1, 0.25, 0.5, 1.0]) for _ in range(size)], dtype=np.float32
            ),
        ).astype(np.float32)
        serving = np.array([rng.choice([0, 1, 1, 2, 3]) for _ in range(size)], dtype=np.int32)
        for n in range(60):
            if n % 10 == 0:
                terms = rng.sample(dense_terms, min(len(dense_terms), 10))  # more dense terms than the tuple
                kinds_seen.add("many dense")
            elif n % 10 == 1:
                terms = rng.sample(WORDS[30:], 3)  # rare terms only: the block-skipping path
                kinds_seen.add("sparse only")
            else:
                terms = [*_words(rng, 1, 5), *rng.sample(WORDS[25:], rng.randint(0, 2)), "absent"]
            plan = text.plan(terms, size)
            want = _plain_scores(text, terms, size)
            if plan is None:
                assert not want.any()
                continue
            got = text.scores(terms, size)
            assert got is not None and np.array_equal(got, want)
            ranked = want * boost
            positive = ranked > 0
            wanted = rng.choice([4, 12, 40, 4000])
            best = np.lexsort((np.arange(size), -ranked))[: min(wanted, int(positive.sum()))]
            count, instances, slots, scores = plan.top(size, boost, serving, wanted)
            assert (count, instances) == (int(positive.sum()), int(serving[positive].sum()))
            assert np.array_equal(slots, best) and np.array_equal(scores, ranked[best])
            count, instances, slots, _ = plan.top(size, boost, None, wanted)
            assert count == instances == int(positive.sum()) and np.array_equal(slots, best)
            at = np.array([rng.randrange(size) for _ in range(20)], dtype=np.int64)
            assert np.array_equal(plan.ranked_at(at, boost), ranked[at])
        for _ in range(200):  # re-describe, forget and add documents
            slot = rng.randrange(size)
            if rng.random() < 0.7:
                text.set(slot, _words(rng, 2, 14))
            else:
                text.remove(slot)
    assert kinds_seen == {"many dense", "sparse only"}


def test_intent_only_ranking_widens_when_one_agent_fills_the_best_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent whose 30 versions are the 30 best matches: the kept best slots (4 x max_results) hold one agent,
    so the pass runs again keeping more, and the answer still has max_results agents."""
    monkeypatch.setattr(text_module, "DENSE_MIN", 5)
    index = AgentIndex()
    ids = iter(range(1, 1000))

    def add(name: str, version: str, description: str) -> None:
        card = agent_pb2.AgentCard(
            name=name, namespace="ns", version=version, purpose="search", description=description
        )
        card.skills.add(name="find", description="find things")
        record = index.put_version(VersionRecord(next(ids), card, parse_version(version), "h"))
        index.put_instance(
            InstanceRecord(
                f"i{record.version_id}",
                f"l{record.version_id}",
                record.version_id,
                "10.0.0.1:1",
                agent_pb2.SERVING_STATE_SERVING,
                0.0,
                10.0,
                "",
                0.0,
                0.0,
            )
        )

    for minor in range(30):
        add("popular", f"1.{minor}.0", "parcel parcel parcel parcel tracking")
    for n in range(10):
        add(f"other-{n}", "1.0.0", f"parcel and a long description of other things number {n} here")
    index.prepare()
    result = index.discover(DiscoveryQuery(intent="parcel", max_results=3), {})
    keys = [c.version.key for c in result.candidates]
    assert keys[0] == "ns/popular" and len(keys) == 3 and len(set(keys)) == 3
    assert result.candidates[0].version.card.version == "1.29.0"  # routed to the highest matching version
    assert result.matched_count == 40
