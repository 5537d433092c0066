"""The in-memory discovery index: both scopes, intent ranking, reasons, routing among versions."""

from __future__ import annotations

import re

from agentmesh.services.registry.discovery import AgentIndex
from agentmesh.services.registry.model import DiscoveryQuery, InstanceRecord, VersionRecord
from agentmesh.services.registry.routing import RoutePolicy
from agentmesh.services.registry.text import TextIndex, tokenize
from agentmesh.services.registry.validation import compile_patterns, parse_specifier, parse_version
from agentmesh.v1 import agent_pb2
from tests.fixtures.registry import make_card

SERVING = agent_pb2.SERVING_STATE_SERVING


def _add(
    index: AgentIndex, card: agent_pb2.AgentCard, *, load: float = 0.0, state: int = SERVING
) -> InstanceRecord:
    version_id = len(index.versions) + 1
    index.put_version(VersionRecord(version_id, card, parse_version(card.version), f"hash-{version_id}"))
    instance = InstanceRecord(
        f"i{version_id}", f"l{version_id}", version_id, card.endpoint, state, load, 10.0, "", 0.0, 0.0
    )
    index.put_instance(instance)
    return instance


def _names(
    index: AgentIndex, query: DiscoveryQuery, policies: dict[str, RoutePolicy] | None = None
) -> list[str]:
    return [
        f"{c.version.key}@{c.version.card.version}" for c in index.discover(query, policies or {}).candidates
    ]


def test_tokenize_splits_snake_case_drops_stopwords_and_folds_plurals() -> None:
    assert tokenize("Refund the damaged_orders, please!") == ["refund", "damaged", "order"]


def test_tokenize_follows_unicode_word_rules_and_bigrams_unspaced_scripts() -> None:
    assert tokenize("Informe en español") == ["informe", "en", "español"]
    assert tokenize("Выставить СЧЁТ") == ["выставить", "счет"]  # case-folded; yo written as ye
    assert tokenize("हिन्दी में") == ["हिन्दी", "में"]  # combining marks stay in the word
    assert tokenize("請求書を発行") == ["請求", "求書", "書を", "を発", "発行"]
    assert tokenize("猫、犬") == ["猫", "犬"]  # a lone character is its own token
    assert tokenize("\uff21\uff22\uff23_orders") == ["abc", "order"]  # NFKC folds full-width letters
    assert tokenize("🙂 !!") == []


def test_an_intent_in_another_script_ranks_and_one_matching_nothing_gets_nothing() -> None:
    index = AgentIndex()
    _add(index, make_card("invoices", description="請求書を発行します。", skills=("issue_invoice",)))
    _add(index, make_card("weather", description="天気予報を調べます。", skills=("forecast",)))
    _add(index, make_card("refunds", description="Refund damaged orders.", skills=("refund_order",)))
    assert _names(index, DiscoveryQuery(intent="請求書がほしい"))[0] == "support/invoices@1.0.0"
    assert _names(index, DiscoveryQuery(intent="量子計算")) == []
    assert _names(index, DiscoveryQuery(intent="🙂")) == []  # an intent no card can hold matches none
    assert len(_names(index, DiscoveryQuery(intent="  "))) == 3  # a blank intent is no intent


def test_bm25_prefers_rarer_terms_and_forgets_removed_documents() -> None:
    text = TextIndex()
    text.set(0, ["refund", "order"])
    text.set(1, ["order", "status"])
    text.set(2, ["order", "status", "shipping"])
    scores = text.scores(["refund", "order"], 3)
    assert scores is not None and scores[0] > scores[1] > 0
    text.remove(0)
    assert text.scores(["refund"], 3) is None


def test_filters_combine_and_counts_are_reported() -> None:
    index = AgentIndex()
    _add(index, make_card("triage", policies=("pii:allowed", "region:eu"), labels={"team": "a"}))
    _add(index, make_card("triage-us", policies=("pii:allowed", "region:us")))
    _add(index, make_card("billing", namespace="finance", purpose="billing", skills=("invoice",)))
    _add(index, make_card("sleepy"), state=agent_pb2.SERVING_STATE_DRAINING)
    query = DiscoveryQuery(patterns=compile_patterns(["support/.*"]), required_policies=("pii:allowed",))
    result = index.discover(query, {})
    assert sorted(c.version.card.name for c in result.candidates) == ["triage", "triage-us"]
    assert (result.visible_count, result.matched_count) == (2, 2)  # the DRAINING one is not live
    assert _names(index, DiscoveryQuery(required_policies=("pii:allowed", "region:eu"))) == [
        "support/triage@1.0.0"
    ]
    assert _names(index, DiscoveryQuery(required_policies=("nobody:has-this",))) == []
    assert _names(index, DiscoveryQuery(purpose="billing")) == ["finance/billing@1.0.0"]
    assert _names(index, DiscoveryQuery(labels=(("team", "a"),))) == ["support/triage@1.0.0"]
    assert _names(index, DiscoveryQuery(names=frozenset({"finance/billing"}))) == ["finance/billing@1.0.0"]
    assert _names(index, DiscoveryQuery(skill="invoice", names=frozenset({"support/triage"}))) == []


def test_intent_ranks_by_relevance_and_explains_what_matched() -> None:
    index = AgentIndex()
    _add(
        index,
        make_card(
            "refunds", purpose="refunds", skills=("refund_order",), description="Refund damaged orders."
        ),
    )
    _add(
        index,
        make_card(
            "shipping", purpose="shipping", skills=("track_order",), description="Track where an order is."
        ),
    )
    _add(
        index,
        make_card("weather", purpose="weather", skills=("forecast",), description="Tomorrow's weather."),
    )
    result = index.discover(DiscoveryQuery(intent="refund my damaged order"), {})
    assert [c.version.card.name for c in result.candidates] == [
        "refunds",
        "shipping",
    ]  # weather matches nothing
    best = result.candidates[0]
    assert best.matched_skill == "refund_order"
    assert any(r.startswith("intent matched: refund, damaged, order") for r in best.reasons)
    assert best.score > result.candidates[1].score


def test_less_loaded_agents_rank_first_when_equally_relevant() -> None:
    index = AgentIndex()
    _add(index, make_card("busy"), load=0.9)
    _add(index, make_card("idle"), load=0.1)
    assert _names(index, DiscoveryQuery(skill="classify_ticket")) == [
        "support/idle@1.0.0",
        "support/busy@1.0.0",
    ]


def test_one_candidate_per_agent_routed_by_weight_and_sticky_per_key() -> None:
    index = AgentIndex()
    _add(index, make_card("triage", version="1.0.0"))
    _add(index, make_card("triage", version="1.1.0", port=9001))
    query = DiscoveryQuery(skill="classify_ticket", routing_key="task-1")
    assert _names(index, query) == ["support/triage@1.1.0"]  # no policy: highest version
    policy = RoutePolicy("support", "triage", {"1.0.0": 50, "1.1.0": 50})
    policies = {"support/triage": policy}
    picks = {
        key: _names(index, DiscoveryQuery(skill="classify_ticket", routing_key=key), policies)[0]
        for key in map(str, range(100))
    }
    assert 20 < sum(v.endswith("1.1.0") for v in picks.values()) < 80
    for key, pick in picks.items():
        assert _names(index, DiscoveryQuery(skill="classify_ticket", routing_key=key), policies) == [pick]
    constrained = DiscoveryQuery(
        skill="classify_ticket", version_constraint=parse_specifier("<1.1"), routing_key="x"
    )
    assert _names(index, constrained, policies) == ["support/triage@1.0.0"]


def test_instances_come_and_go() -> None:
    index = AgentIndex()
    instance = _add(index, make_card("triage"))
    assert _names(index, DiscoveryQuery()) == ["support/triage@1.0.0"]
    index.set_state(instance.instance_id, agent_pb2.SERVING_STATE_DRAINING)
    assert _names(index, DiscoveryQuery()) == []
    index.set_state(instance.instance_id, SERVING)
    index.remove_instance(instance.instance_id)
    assert _names(index, DiscoveryQuery()) == []
    assert index.serving_instances == 0


def test_visibility_regexes_agree_with_fullmatch_on_every_agent() -> None:
    index = AgentIndex()
    names = [
        ("ns-01", "triage"),
        ("ns-01", "refunds"),
        ("ns-07", "triage"),
        ("ns-10", "billing"),
        ("other", "ns-01"),
    ]
    for namespace, name in names:
        _add(index, make_card(name, namespace=namespace))
    patterns = ["ns-0(1|7)/.*", "ns-01/.*", "(?i)NS-.*", ".*/ns-01", "ns-1./b.*", "other/ns-01|ns-07/.*"]
    patterns += [
        "ns-01/triage",
        "(ns-01/.*|other/ns-01)",
        "(ns-0.*)e",
        "ns-07/.*x",
        "ns-0[0-3]/.*",
        "(ns-01|other)/.*",
        "ns-01/tri(age|x)",
        "ns-(01|1)0?/.*",
        "ns-0[^7]/.*",
        "n?s.*",
    ]
    for pattern in patterns:
        expected = sorted(f"{ns}/{n}" for ns, n in names if re.fullmatch(pattern, f"{ns}/{n}"))
        found = index.discover(DiscoveryQuery(patterns=compile_patterns([pattern]), max_results=100), {})
        assert sorted(c.version.key for c in found.candidates) == expected, pattern
        assert found.visible_count == len(expected)
    # A scope memoised before an agent arrived still sees it.
    scope = DiscoveryQuery(patterns=compile_patterns(["ns-0(1|7)/.*"]), max_results=100)
    _add(index, make_card("late", namespace="ns-07"))
    assert "ns-07/late" in {c.version.key for c in index.discover(scope, {}).candidates}
