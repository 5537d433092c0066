"""Synthetic, skewed agent cards for the registry benchmarks, and a bulk loader into PostgreSQL.

~200 purposes, ~2,000 skill names, 0-4 of ~30 policies and 15-40-word descriptions, each drawn from a Zipf-like
distribution (a few purposes, skills and words are very common, most are rare), so common intent words match
tens of thousands of cards, as in a real mesh. Deterministic for a given seed.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from agentmesh.v1 import agent_pb2

TRUST_DOMAIN = "agentmesh.bench"
_COMMON = (
    "ticket order refund customer invoice payment shipping account support billing delivery product "
    "return address email report search summary document contract claim policy quote booking schedule "
    "translate classify extract route escalate review approve validate notify analyze forecast inventory "
    "supplier purchase price discount subscription renewal cancel complaint feedback survey lead opportunity "
    "campaign marketing compliance audit risk fraud identity verify onboarding employee payroll leave expense "
    "travel receipt tax ledger budget transfer loan credit card damaged lost late tracking warranty repair"
).split()


_CUMULATIVE: dict[tuple[int, float], list[float]] = {}


def _zipf_index(rng: random.Random, n: int, s: float = 1.0) -> int:
    """A rank in 0..n-1 with probability proportional to 1 / (rank + 1) ** s (rank 0 most common)."""
    cumulative = _CUMULATIVE.get((n, s))
    if cumulative is None:
        total, cumulative = 0.0, []
        for rank in range(1, n + 1):
            total += 1.0 / rank**s
            cumulative.append(total)
        _CUMULATIVE[n, s] = cumulative
    return bisect.bisect_left(cumulative, rng.random() * cumulative[-1])


def _syllables(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(count))


@dataclass(frozen=True)
class Vocabulary:
    """Words, purposes, skills and policies with fixed popularity ranks."""

    words: list[str]
    purposes: list[str]
    skills: list[str]
    policies: list[str]

    @classmethod
    def build(cls, seed: int = 7) -> Vocabulary:
        """A deterministic vocabulary: ~3,000 words, 200 purposes, 2,000 skills, 30 policies."""
        rng = random.Random(seed)
        words = list(_COMMON)
        seen = set(words)
        while len(words) < 3000:
            word = _syllables(rng, rng.randint(2, 4))
            if word not in seen:
                seen.add(word)
                words.append(word)
        purposes = [f"{words[i]}-{words[(i * 7 + 3) % 300]}" for i in range(200)]
        skills = list(dict.fromkeys(f"{words[i % 400]}_{words[(i * 13 + 5) % 900]}" for i in range(2400)))[
            :2000
        ]
        keys = ["pii", "region", "tier", "data", "model", "cost", "sla", "audit"]
        values = ["allowed", "eu", "us", "gold", "restricted", "local", "low", "high", "strict", "none"]
        policies = list(
            dict.fromkeys(f"{keys[i % len(keys)]}:{values[(i * 3) % len(values)]}" for i in range(60))
        )[:30]
        return cls(words, purposes, skills, policies)

    def sentence(self, rng: random.Random, low: int, high: int) -> str:
        """``low``..``high`` words drawn by popularity."""
        return " ".join(self.words[_zipf_index(rng, len(self.words))] for _ in range(rng.randint(low, high)))


def cards(count: int, seed: int = 11, vocabulary: Vocabulary | None = None) -> Iterator[agent_pb2.AgentCard]:
    """``count`` valid cards (one version each), names unique, ~50 namespaces."""
    vocab = vocabulary or Vocabulary.build()
    rng = random.Random(seed)
    for index in range(count):
        namespace = f"ns-{_zipf_index(rng, 50):02d}"
        purpose = vocab.purposes[_zipf_index(rng, len(vocab.purposes))]
        name = f"{purpose.split('-')[0]}-{index:06d}"
        policies = sorted(
            {vocab.policies[_zipf_index(rng, len(vocab.policies))] for _ in range(rng.randint(0, 4))}
        )
        card = agent_pb2.AgentCard(
            name=name,
            namespace=namespace,
            version=f"1.{rng.randint(0, 5)}.{rng.randint(0, 9)}",
            purpose=purpose,
            description=vocab.sentence(rng, 15, 40),
            policies=policies,
            labels={"team": f"team-{rng.randint(0, 99)}"},
            endpoint=f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}:7000",
            owner=f"team-{rng.randint(0, 99)}",
            spiffe_id=f"spiffe://{TRUST_DOMAIN}/agent/{namespace}/{name}",
        )
        for skill_name in dict.fromkeys(
            vocab.skills[_zipf_index(rng, len(vocab.skills))] for _ in range(rng.randint(1, 3))
        ):
            skill = card.skills.add(name=skill_name, description=vocab.sentence(rng, 5, 12))
            skill.input_schema.update({"type": "object", "properties": {"text": {"type": "string"}}})
            skill.output_schema.update({"type": "object"})
        yield card


def bulk_load(
    url: str, all_cards: list[agent_pb2.AgentCard], *, lease_seconds: float, ttl: float
) -> list[str]:
    """COPY ``all_cards`` as registered, live instances into the PostgreSQL database at ``url``.

    Benchmark set-up only (100,000 RegisterAgent calls would take minutes): the rows are exactly what
    ``RegisterAgent`` writes. Returns the lease ids, in card order.
    """
    import copy

    import psycopg
    from sqlalchemy.engine import make_url

    from agentmesh.services.registry.registry import card_hash

    parsed = make_url(url)
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=lease_seconds)
    agent_ids: dict[tuple[str, str], int] = {}
    lease_ids: list[str] = []
    bits: dict[str, int] = {}
    with psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database, autocommit=False
    ) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY agents (id, namespace, name, created_at) FROM STDIN") as copy_in:
                for card in all_cards:
                    key = (card.namespace, card.name)
                    agent_ids[key] = len(agent_ids) + 1
                    copy_in.write_row((agent_ids[key], card.namespace, card.name, now))
            columns = "id, agent_id, version, purpose, description, policies, policy_mask, labels, owner, spiffe_id, card, card_hash, card_proto, created_at"
            with cur.copy(f"COPY agent_versions ({columns}) FROM STDIN") as copy_in:
                for version_id, card in enumerate(all_cards, start=1):
                    stored = copy.deepcopy(card)
                    stored.ClearField("endpoint")
                    mask = 0
                    for policy in card.policies:
                        mask |= 1 << bits.setdefault(policy, len(bits))
                    copy_in.write_row(
                        (
                            version_id,
                            agent_ids[card.namespace, card.name],
                            card.version,
                            card.purpose,
                            card.description,
                            json.dumps(list(card.policies)),
                            mask,
                            json.dumps(dict(card.labels)),
                            card.owner,
                            card.spiffe_id,
                            json.dumps(json_format.MessageToDict(stored, preserving_proto_field_name=True)),
                            card_hash(stored),
                            stored.SerializeToString(deterministic=True),
                            now,
                        )
                    )
            with cur.copy(
                "COPY agent_skills (agent_version_id, skill_name, description, input_schema, output_schema, tags) FROM STDIN"
            ) as copy_in:
                for version_id, card in enumerate(all_cards, start=1):
                    for skill in card.skills:
                        schema = json.dumps(json_format.MessageToDict(skill.input_schema))
                        copy_in.write_row((version_id, skill.name, skill.description, schema, "{}", "[]"))
            instance_columns = "instance_id, lease_id, agent_version_id, endpoint, state, load, lease_ttl_seconds, registered_by, registered_at, updated_at"
            instance_ids = []
            with cur.copy(f"COPY agent_instances ({instance_columns}) FROM STDIN") as copy_in:
                for version_id, card in enumerate(all_cards, start=1):
                    instance_id, lease_id = uuid.uuid4().hex, uuid.uuid4().hex
                    instance_ids.append(instance_id)
                    lease_ids.append(lease_id)
                    copy_in.write_row(
                        (
                            instance_id,
                            lease_id,
                            version_id,
                            card.endpoint,
                            "SERVING",
                            0.0,
                            ttl,
                            card.spiffe_id,
                            now,
                            now,
                        )
                    )
            with cur.copy("COPY agent_leases (instance_id, expires_at) FROM STDIN") as copy_in:
                for instance_id in instance_ids:
                    copy_in.write_row((instance_id, expires))
            with cur.copy("COPY policy_bits (policy, bit) FROM STDIN") as copy_in:
                for policy, bit in bits.items():
                    copy_in.write_row((policy, bit))
            for table in ("agents", "agent_versions", "agent_skills"):
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                )
            cur.execute("ANALYZE")
        conn.commit()
    return lease_ids


def query_mix(rng: random.Random, vocab: Vocabulary, kind: str) -> dict[str, Any]:
    """One discovery query of ``kind``: Q1 skill + policies, Q2 regex scope + purpose + policies, Q3 intent."""
    policies = sorted({vocab.policies[_zipf_index(rng, 8)] for _ in range(rng.randint(1, 2))})
    if kind == "Q1":
        return {"skill": vocab.skills[_zipf_index(rng, len(vocab.skills))], "required_policies": policies}
    if kind == "Q2":
        namespaces = "|".join(f"{_zipf_index(rng, 50):02d}" for _ in range(rng.randint(1, 3)))
        return {
            "patterns": [f"ns-({namespaces})/.*"],
            "purpose": vocab.purposes[_zipf_index(rng, len(vocab.purposes))],
            "required_policies": policies[:1],
        }
    return {"intent": vocab.sentence(rng, 3, 6), "max_results": 10}
