"""The support agents' rules that need no model or server: PII, masking, priority, ranking, replies, reviews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agentmesh.agents._support import (
    Article,
    Ticket,
    find_pii,
    first_name,
    mask_email,
    mask_phone,
    redact_pii,
    split_sentences,
)
from agentmesh.agents.crm import CrmStore, customer_view, may_see_pii, pii_refusal, planner_identity
from agentmesh.agents.examples import load_tickets
from agentmesh.agents.kb_search import load_articles, rank_articles
from agentmesh.agents.kb_search._kb import best_passage_score, passages_of
from agentmesh.agents.quality_check import verdict
from agentmesh.agents.quality_check._checks import (
    RELEVANCE_THRESHOLD,
    citation_problems,
    cited_paragraphs,
    pii_problems,
    politeness_problems,
    relevance_problems,
)
from agentmesh.agents.responder import (
    DraftInput,
    ReplyPlan,
    build_prompt,
    compose_reply,
    finish_generated,
    plan_from_feedback,
    select_sentences,
)
from agentmesh.agents.responder._compose import Candidate, candidate_sentences, customer_context
from agentmesh.agents.triage import INTENTS, assess_priority, intent_scores
from agentmesh.agents.triage._rules import load_prototypes
from agentmesh.cli._agent import resolve_agent_class
from agentmesh.security import DelegationClaims, TokenKind

# --- personal data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Call me on +1 415 555 0142 tonight", ["phone"]),
        ("my number is (555) 123-4567", ["phone"]),
        ("write to jane.doe@example.com", ["email"]),
        ("card 4111 1111 1111 1111 was charged", ["card"]),
        ("jane@example.org or 0612345678", ["email", "phone"]),
    ],
)
def test_personal_data_is_found(text: str, kinds: list[str]) -> None:
    assert [m.kind for m in find_pii(text)] == kinds


@pytest.mark.parametrize(
    "text",
    [
        "Order NW-10482 placed on 2026-11-16 for 89.99 EUR",
        "Refunds take 5 to 10 business days; we answer from 8:00 to 20:00 CET.",
        "A 16-digit number that fails the Luhn check: 4111 1111 1111 1112",
        "Delivered on 16/11/2026",
    ],
)
def test_order_numbers_dates_prices_and_non_cards_are_not_personal_data(text: str) -> None:
    assert find_pii(text) == []


def test_redaction_replaces_each_item_and_keeps_the_rest() -> None:
    text = "Reach me at tom@example.com or +49 151 2345 6789, order NW-1."
    assert redact_pii(text) == "Reach me at [redacted email] or [redacted phone], order NW-1."
    # Addresses in other scripts are personal data too (the agents answer es/de/fr tickets).
    assert redact_pii("Escribe a josé.peña@correo.es o jürgen@büro-müller.de.") == (
        "Escribe a [redacted email] o [redacted email]."
    )


def test_masks_keep_enough_to_recognise_but_not_to_contact() -> None:
    assert mask_email("maria.lopez@example.com") == "m***@e***.com"
    assert mask_phone("+34 612 345 678") == "+** *** *** *78"
    assert find_pii(mask_phone("+34 612 345 678")) == []
    assert first_name("Dr. Maria Lopez") == "Maria"
    assert first_name("") == ""


def test_sentences_split_on_punctuation_and_blank_lines() -> None:
    assert split_sentences("It broke. I want a refund!\n\nCan you help? Thanks.") == [
        "It broke.",
        "I want a refund!",
        "Can you help?",
        "Thanks.",
    ]


def test_ticket_text_joins_subject_and_body() -> None:
    assert Ticket(subject="Refund", text="It broke.").as_text() == "Refund. It broke."
    assert Ticket(subject="Where is it?", text="Late.").as_text() == "Where is it? Late."
    assert Ticket(text="Only a body").as_text() == "Only a body"


# --- triage ------------------------------------------------------------------------------------------------


def test_every_intent_has_prototypes() -> None:
    prototypes = load_prototypes()
    assert tuple(prototypes) == INTENTS
    assert all(len(sentences) >= 5 for sentences in prototypes.values())


def test_intent_scores_pick_the_label_most_segments_agree_with() -> None:
    owners = np.array([0, 0, 1, 1])
    # Whole ticket leans to label 1 a little, but every sentence clearly says label 0.
    similarities = np.array([[0.40, 0.30, 0.45, 0.20], [0.80, 0.10, 0.20, 0.10], [0.70, 0.20, 0.30, 0.10]])
    result = intent_scores(similarities, owners, ("refund", "billing"))
    assert result.intent == "refund"
    assert result.confidence == pytest.approx(result.scores["refund"], abs=1e-4) and result.confidence > 0.9
    assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("intent", "sentiment", "text", "priority"),
    [
        ("other", 0.8, "Thank you, great service!", "low"),
        ("shipping", 0.0, "Where is my parcel?", "normal"),
        ("shipping", -0.7, "Three weeks late, I am furious.", "high"),
        ("billing", -0.1, "I was charged twice for one order.", "high"),
        ("account", -0.2, "I think my account was hacked, please block it immediately!", "urgent"),
        ("refund", -0.6, "URGENT: refund me today, this is a disgrace", "urgent"),
    ],
)
def test_priority_rises_with_upset_urgent_money_and_security_cues(
    intent: str, sentiment: float, text: str, priority: str
) -> None:
    level, reasons = assess_priority(intent, sentiment, text)
    assert level == priority
    assert reasons[0].startswith(f"intent {intent!r}")


# --- knowledge base ----------------------------------------------------------------------------------------


def test_knowledge_base_is_a_real_set_of_articles() -> None:
    articles = load_articles()
    assert len(articles) >= 40
    assert len({a.article_id for a in articles}) == len(articles)
    assert all(len(a.paragraphs) >= 2 and len(a.body.split()) >= 40 for a in articles)
    # Every passage fits MiniLM's 128-token window (roughly 0.75 words per token).
    assert max(len(p.text.split()) for p in passages_of(articles)) < 96


def test_ranking_uses_each_articles_best_passage() -> None:
    articles = load_articles()[:3]
    passages = passages_of(articles)
    vectors = np.zeros((len(passages), 3), dtype=np.float32)
    for index, passage in enumerate(passages):
        vectors[index, passage.article] = 0.5
    best_of_third = next(i for i, p in enumerate(passages) if p.article == 2)
    vectors[best_of_third] = [0.0, 0.0, 1.0]
    query = np.array([0.1, 0.0, 1.0], dtype=np.float32)
    ranked = rank_articles(query, vectors, passages, top_k=2)
    # Article 2: its best passage (1.0) averaged with its next best paragraph (0.5) at weight 0.5.
    assert [(index, round(score, 3)) for index, score, _ in ranked] == [(2, 0.833), (0, 0.05)]
    assert ranked[0][2] is passages[best_of_third]
    assert best_passage_score(query, vectors, passages, 2) == pytest.approx(1.0)


def test_ranking_prefers_an_article_whose_body_answers_over_one_matching_a_single_passage() -> None:
    # Article 0 matches the query in one passage only (its title, 0.60); article 1's best paragraph is a
    # little lower (0.55) but a second paragraph of it matches too (0.50): it is the article that answers.
    articles = load_articles()[:2]
    passages = passages_of(articles)
    vectors = np.zeros((len(passages), 2), dtype=np.float32)
    title_of_first = next(i for i, p in enumerate(passages) if p.article == 0 and not p.paragraph)
    vectors[title_of_first] = [0.6, 0.0]
    paragraphs = [i for i, p in enumerate(passages) if p.article == 1 and p.paragraph]
    vectors[paragraphs[0]], vectors[paragraphs[1]] = [0.0, 0.55], [0.0, 0.5]
    query = np.array([1.0, 1.0], dtype=np.float32)
    ranked = rank_articles(query, vectors, passages, top_k=2)
    assert [(index, round(score, 3)) for index, score, _ in ranked] == [(1, 0.533), (0, 0.4)]
    assert ranked[0][2] is passages[paragraphs[0]]
    # The confidence floor reads the best passage's score, not the average.
    assert best_passage_score(query, vectors, passages, 1) == pytest.approx(0.55)
    # A keyword bonus is added to the article's score.
    bonus = np.array([0.4, 0.0], dtype=np.float32)
    ranked = rank_articles(query, vectors, passages, top_k=2, bonus=bonus)
    assert [(index, round(score, 3)) for index, score, _ in ranked] == [(0, 0.8), (1, 0.533)]
    assert best_passage_score(query, vectors, passages, 0, bonus) == pytest.approx(1.0)


def test_example_tickets_name_real_intents_and_articles() -> None:
    tickets = load_tickets()
    ids = {a.article_id for a in load_articles()}
    assert 8 <= len(tickets) <= 12
    assert {t.expected.intent for t in tickets} <= set(INTENTS)
    assert all(set(t.expected.articles) <= ids and t.expected.articles for t in tickets)


# --- crm -----------------------------------------------------------------------------------------------------

PLANNER = planner_identity("agentmesh.test")


CRM = "spiffe://agentmesh.test/agent/support/crm"


def claims(
    kind: TokenKind = TokenKind.STEP, scopes: str = "pii:read", task_id: str = "t-1", audience: str = CRM
) -> DelegationClaims:
    """Claims as the agent runtime hands them to the skill once the token verified."""
    return DelegationClaims(
        kind=kind,
        subject="user-42",
        tenant="acme",
        scopes=frozenset(scopes.split()),
        actor_chain=(),
        issuer=PLANNER,
        audience=audience,
        task_id=task_id if kind is TokenKind.STEP else None,
        step_id="s-1" if kind is TokenKind.STEP else None,
        issued_at=0.0,
        expires_at=120.0,
        token_id="j",
        token_hash="h",
    )


@pytest.mark.parametrize(
    ("requested", "caller", "delegation", "refusal"),
    [
        (True, PLANNER, claims(), ""),
        (False, PLANNER, claims(), "NOT_REQUESTED"),  # not asked for: never by default
        (True, PLANNER, None, "NO_TOKEN"),  # not on behalf of a user
        (True, "spiffe://agentmesh.test/agent/support/responder", claims(), "CALLER_NOT_ALLOWED"),
        (True, "", claims(), "CALLER_NOT_ALLOWED"),  # no verified identity (insecure dev)
        (True, PLANNER, claims(TokenKind.END_USER), "NOT_A_STEP_TOKEN"),  # the gateway's token, not a step's
        (True, PLANNER, claims(scopes="orders:read"), "SCOPE_MISSING"),
        (True, PLANNER, claims(task_id="t-2"), "TOKEN_WRONG_TASK"),
        (True, PLANNER, claims(audience="spiffe://agentmesh.test/agent/support/x"), "TOKEN_WRONG_AUDIENCE"),
    ],
)
def test_only_the_planner_under_a_pii_step_token_of_the_task_and_asking_sees_pii(
    requested: bool, caller: str, delegation: DelegationClaims | None, refusal: str
) -> None:
    kwargs = {"requested": requested, "caller": caller, "allowed_callers": frozenset({PLANNER})}
    call = {"delegation": delegation, "task_id": "t-1", "audience": CRM}
    assert pii_refusal(**kwargs, **call, delegation_refusal="") == refusal
    assert may_see_pii(**kwargs, **call) is (refusal == "")


async def test_crm_store_seeds_once_and_finds_by_id_or_email(tmp_path: Path) -> None:
    store = CrmStore.at(tmp_path / "crm.db")
    try:
        assert await store.create() == 6
        assert await store.create() == 0  # idempotent: a restart does not duplicate customers
        by_email = await store.find(email="  Maria.Lopez@Example.com ")
        by_id = await store.find(customer_id="C-1001")
        assert (
            by_email is not None
            and by_id is not None
            and by_email.customer_id == by_id.customer_id == "C-1001"
        )
        assert [o.order_id for o in by_email.orders] == ["NW-10482", "NW-09811"]  # newest first
        assert await store.find(email="nobody@example.com") is None
        masked = customer_view(by_email, reveal_pii=False)
        assert (masked.email, masked.phone, masked.address) == (
            "m***@e***.com",
            "+** *** *** *78",
            "[redacted], Madrid, ES",
        )
        assert find_pii(masked.model_dump_json()) == []
        full = customer_view(by_email, reveal_pii=True)
        assert (full.email, full.phone) == ("maria.lopez@example.com", "+34 612 345 678")
        assert full.address == "Calle Mayor 12, 3B, 28013 Madrid, ES"
    finally:
        await store.close()


# --- responder -------------------------------------------------------------------------------------------------

ARTICLES = [
    Article(
        article_id="kb-refund-policy",
        title="Refund policy",
        body="You can request a refund within 30 days. "
        "Refunds go back to the original payment method. Call +1 415 555 0142 for help today.",
    ),
    Article(
        article_id="kb-returns", title="Returns", snippet="Start a return from Orders and print the label."
    ),
]


def test_candidates_skip_sentences_with_personal_data_and_fragments() -> None:
    texts = [c.text for c in candidate_sentences(ARTICLES)]
    assert texts == [
        "You can request a refund within 30 days.",
        "Refunds go back to the original payment method.",
        "Start a return from Orders and print the label.",
    ]


def test_selection_prefers_similar_sentences_skips_duplicates_and_keeps_the_best_article() -> None:
    candidates = [
        Candidate("a", 0, "x1"),
        Candidate("b", 1, "y1"),
        Candidate("b", 1, "y2"),
        Candidate("c", 2, "z"),
    ]
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    similarity = np.array([0.3, 0.9, 0.88, 0.6])
    assert select_sentences(similarity, vectors, candidates, ReplyPlan(sentences=2)) == [1, 0]
    assert select_sentences(similarity, vectors, candidates, ReplyPlan(sentences=3)) == [1, 3, 0]
    assert select_sentences(
        similarity, vectors, candidates, ReplyPlan(sentences=2, cite_top_article=False)
    ) == [1, 3]


def test_reply_greets_by_first_name_cites_and_never_leaks_pii() -> None:
    quoted = [
        Candidate("kb-refund-policy", 0, "Refunds go back to the original payment method."),
        Candidate("kb-returns", 1, "Write to returns@example.com to start."),
    ]
    reply, citations = compose_reply(
        first_name="Maria",
        intent="refund",
        subject="Refund for maria@example.com",
        quoted=quoted,
        titles={"kb-refund-policy": "Refund policy"},
        plan=ReplyPlan(restate_subject=True),
    )
    assert reply.startswith("Hi Maria,")
    assert citations == ["kb-refund-policy", "kb-returns"]
    assert '(see "Refund policy" [kb-refund-policy])' in reply and "[kb-returns]" in reply
    assert find_pii(reply) == [] and "[redacted email]" in reply
    assert reply.rstrip().endswith("Northwind Support")


CUSTOMER = {
    "name": "Tom Becker",
    "email": "t***@e***.com",
    "plan": "plus-monthly",
    "orders": [
        {"order_id": "NW-2", "item": "Kettle", "status": "in_transit"},
        {"order_id": "NW-1", "item": "Toaster", "status": "delivered"},
    ],
}


@pytest.mark.parametrize(
    ("text", "intent", "expected"),
    [
        (
            "Where is order NW-1?",
            "shipping",
            "I can see your order NW-1 (Toaster), which our records show as delivered.",
        ),
        (
            "My parcel is late",
            "shipping",
            "I can see your order NW-2 (Kettle), which is on its way with the carrier.",
        ),
        ("Cancel my membership", "cancellation", "I can see you are on the Northwind Plus monthly plan."),
        ("I forgot my password", "account", ""),
    ],
)
def test_replies_mention_the_order_or_plan_the_ticket_is_about(text: str, intent: str, expected: str) -> None:
    assert customer_context(CUSTOMER, text, intent) == expected
    assert customer_context(None, text, intent) == ""


def test_feedback_changes_the_plan() -> None:
    assert plan_from_feedback([]) == ReplyPlan()
    off_topic = plan_from_feedback(["relevance: the reply is off-topic for this ticket"])
    assert off_topic.sentences > ReplyPlan().sentences and off_topic.restate_subject
    assert plan_from_feedback(["length: the reply is too long (500 words)"]).sentences < ReplyPlan().sentences
    narrow = plan_from_feedback(
        ["relevance: cited paragraph 2 is off-topic for this ticket (similarity 0.05 < 0.30)"]
    )
    assert narrow.min_similarity > ReplyPlan().min_similarity


def test_the_generation_prompt_grounds_the_model_and_carries_no_contact_details() -> None:
    request = DraftInput(
        ticket=Ticket(subject="Refund", text="Call me on +34 612 345 678, the kettle is broken."),
        intent="refund",
        articles=ARTICLES,
        feedback=["citation: the reply cites no retrieved article"],
    )
    prompt = build_prompt(request, "Maria")
    assert "[kb-refund-policy] Refund policy:" in prompt and "[kb-returns] Returns:" in prompt
    assert "Greet the customer as Maria" in prompt and "cites no retrieved article" in prompt
    assert "612 345" not in prompt.split("Sources:")[0]


def test_generated_replies_are_made_safe_and_cited() -> None:
    reply, cited = finish_generated("Hi Tom, see [kb-returns] and [kb-made-up]. Call 0612345678.", ARTICLES)
    assert cited == ["kb-returns"] and "[redacted phone]" in reply and "Northwind Support" in reply
    reply, cited = finish_generated("Hi Tom, we will refund you.", ARTICLES)
    assert cited == ["kb-refund-policy"] and "[kb-refund-policy]" in reply


# --- quality check ---------------------------------------------------------------------------------------------

GOOD = (
    "Hi Maria,\n\nThank you for getting in touch about a refund. You can request a refund within 30 days "
    '(see "Refund policy" [kb-refund-policy]).\n\nKind regards,\nNorthwind Support'
)


def test_a_good_reply_has_no_problems() -> None:
    assert pii_problems(GOOD) == [] and politeness_problems(GOOD) == []
    assert citation_problems(GOOD, ["kb-refund-policy"], ["kb-refund-policy", "kb-returns"]) == []
    result = verdict(0.7, [])
    assert result.passed and result.score == 1.0


def test_relevance_checks_the_whole_reply_and_each_cited_paragraph() -> None:
    reply = "Hi Maria,\n\nRefunds take 5 days [kb-refund-policy].\n\nUse 2.4 GHz Wi-Fi [kb-device-setup].\n\nThanks"
    assert cited_paragraphs(reply, ["kb-refund-policy", "kb-device-setup"]) == [
        "Refunds take 5 days [kb-refund-policy].",
        "Use 2.4 GHz Wi-Fi [kb-device-setup].",
    ]
    assert relevance_problems(0.7, [0.6, 0.5]) == []
    problems = relevance_problems(0.7, [0.6, 0.1])
    assert len(problems) == 1 and problems[0].startswith("relevance: cited paragraph 2 is off-topic")
    assert relevance_problems(0.2)[0].startswith("relevance: the reply is off-topic")


def test_each_problem_is_named_with_what_to_do() -> None:
    leaked = GOOD.replace("Kind regards", "Call me on +34 612 345 678. Kind regards")
    assert [p.split(":")[0] for p in pii_problems(leaked)] == ["pii"]
    assert "cites no retrieved article" in citation_problems(GOOD, [], ["kb-refund-policy"])[0]
    assert "were not among" in citation_problems(GOOD, ["kb-x"], ["kb-refund-policy"])[0]
    rude = "Obviously you did not read the FAQ. Deal with it."
    assert len(politeness_problems(rude)) == 3
    failed = verdict(RELEVANCE_THRESHOLD / 2, ["pii: ..."])
    assert not failed.passed and failed.score <= 0.7 and failed.reasons == ["pii: ..."]


# --- packaging ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "card_name"),
    [
        ("triage", "triage"),
        ("sentiment", "sentiment"),
        ("kb_search", "kb-search"),
        ("crm", "crm"),
        ("responder", "responder"),
        ("quality_check", "quality-check"),
    ],
)
def test_agent_run_resolves_each_shipped_agent_by_name(name: str, card_name: str) -> None:
    agent_class = resolve_agent_class(name)
    agent_class.check()
    assert (agent_class.card.name, agent_class.card.namespace) == (card_name, "support")
    assert agent_class.card.purpose and agent_class.card.description and agent_class.card.policies
