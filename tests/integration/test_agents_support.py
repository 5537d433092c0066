"""The customer-service agents, each served by the SDK over mTLS, answering the shipped example tickets
through a real Triton (MiniLM embeddings, sentiment). Assertions are ones a wrong model would fail.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format
from prometheus_client import REGISTRY

from agentmesh._channel import create_channel
from agentmesh._errors import UnavailableError
from agentmesh._settings import Settings
from agentmesh.agent import Agent, AgentRuntime, Invocation, SkillRunner
from agentmesh.agents._support import find_pii
from agentmesh.agents._support._replies import TOPICS
from agentmesh.agents.crm import CrmAgent, planner_identity
from agentmesh.agents.examples import ExampleTicket, load_tickets
from agentmesh.agents.kb_search import KbSearchAgent
from agentmesh.agents.quality_check import QualityCheckAgent
from agentmesh.agents.responder import ResponderAgent
from agentmesh.agents.sentiment import SentimentAgent
from agentmesh.agents.triage import INTENTS, TriageAgent
from agentmesh.inference import free_port
from agentmesh.security import DelegationIssuer, DelegationVerifier, TokenKind
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from tests.fixtures.certs import IssueIdentity

pytestmark = pytest.mark.triton

TICKETS = load_tickets()
AGENTS: dict[str, type[Agent]] = {
    "triage": TriageAgent,
    "sentiment": SentimentAgent,
    "kb-search": KbSearchAgent,
    "crm": CrmAgent,
    "responder": ResponderAgent,
    "quality-check": QualityCheckAgent,
}


@dataclass
class Support:
    """The six agents as the planner reaches them, and as an ops client (not allowed to invoke) does."""

    planner: dict[str, agent_pb2_grpc.AgentServiceStub]
    ops: dict[str, agent_pb2_grpc.AgentServiceStub]
    runtimes: dict[str, AgentRuntime]

    async def call(self, agent: str, skill: str, data: dict[str, Any], **request: Any) -> dict[str, Any]:
        """Invoke ``agent.skill`` as the planner and return the JSON output."""
        response = await self.invoke(agent, skill, data, **request)
        return json_format.MessageToDict(response.output)

    async def invoke(
        self, agent: str, skill: str, data: dict[str, Any], **request: Any
    ) -> agent_pb2.InvokeResponse:
        """The full InvokeResponse (model usages, agent version)."""
        message = agent_pb2.InvokeRequest(skill=skill, task_id="task-support", **request)
        message.input.update(data)
        return await self.planner[agent].Invoke(message, timeout=30)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def support(
    mesh_settings: Settings, issue_identity: IssueIdentity, triton_url: str
) -> AsyncIterator[Support]:
    """All six agents served at once on free ports (no registry), their Triton the session's."""
    for name in AGENTS:
        issue_identity("agent", f"support/{name}")
    issue_identity("service", "planner")
    issue_identity("client", "ops")
    settings = mesh_settings.replace(triton_url=triton_url, shutdown_grace=2.0)
    runtimes: dict[str, AgentRuntime] = {}
    channels: list[grpc.aio.Channel] = []
    try:
        for name, agent_class in AGENTS.items():
            runtimes[name] = AgentRuntime(agent_class(settings), port=0, register=False)
        await asyncio.gather(*(runtime.start() for runtime in runtimes.values()))
        await wait_ready([runtime.agent for runtime in runtimes.values()])
        planner: dict[str, agent_pb2_grpc.AgentServiceStub] = {}
        ops: dict[str, agent_pb2_grpc.AgentServiceStub] = {}
        for name, runtime in runtimes.items():
            for stubs, kind, who in ((planner, "service", "planner"), (ops, "client", "ops")):
                channel = create_channel(runtime.address, settings, kind=kind, name=who)
                channels.append(channel)
                stubs[name] = agent_pb2_grpc.AgentServiceStub(channel)
        yield Support(planner, ops, runtimes)
    finally:
        for channel in channels:
            await channel.close(None)
        await asyncio.gather(*(runtime.stop() for runtime in runtimes.values()))


async def wait_ready(agents: list[Agent], within: float = 180.0) -> None:
    """Poll readiness (Triton reachable, prototypes and knowledge base embedded) instead of sleeping."""
    deadline = time.monotonic() + within
    while not all(await asyncio.gather(*(agent.ready() for agent in agents))):
        assert time.monotonic() < deadline, "support agents not ready in time"
        await asyncio.sleep(0.1)  # poll interval


def ticket_input(ticket: ExampleTicket) -> dict[str, str]:
    return {"subject": ticket.subject, "text": ticket.text}


def by_id(ticket_id: str) -> ExampleTicket:
    return next(t for t in TICKETS if t.id == ticket_id)


# --- cards --------------------------------------------------------------------------------------------------


async def test_every_agent_describes_itself_on_the_mesh(support: Support) -> None:
    skills = {}
    for name, stub in support.planner.items():
        card = (await stub.Describe(agent_pb2.DescribeRequest())).card
        assert (card.name, card.namespace) == (name, "support")
        assert card.purpose and card.description and card.owner
        assert card.spiffe_id == f"spiffe://agentmesh.test/agent/support/{name}"  # derived from the card
        skills[name] = [s.name for s in card.skills]
        assert all(json_format.MessageToDict(s.input_schema)["type"] == "object" for s in card.skills)
    assert skills == {
        "triage": ["classify_ticket"],
        "sentiment": ["score_sentiment"],
        "kb-search": ["search_articles"],
        "crm": ["lookup_customer"],
        "responder": ["draft_reply"],
        "quality-check": ["check_reply"],
    }
    crm = (await support.planner["crm"].Describe(agent_pb2.DescribeRequest())).card
    assert "pii:restricted" in crm.policies


async def test_agents_export_skill_triton_batch_and_breaker_metrics(support: Support) -> None:
    def count(metric: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(metric, labels) or 0.0

    skills_before = count(
        "agentmesh_agent_skill_duration_seconds_count",
        agent="kb-search",
        skill="search_articles",
        outcome="OK",
    )
    triton_before = count(
        "agentmesh_triton_request_duration_seconds_count", model="minilm_embedding", code="OK"
    )
    await support.call("kb-search", "search_articles", {"query": "my parcel is late"})
    assert (
        count(
            "agentmesh_agent_skill_duration_seconds_count",
            agent="kb-search",
            skill="search_articles",
            outcome="OK",
        )
        == skills_before + 1
    )
    assert (
        count("agentmesh_triton_request_duration_seconds_count", model="minilm_embedding", code="OK")
        >= triton_before + 1
    )
    assert count("agentmesh_triton_request_batch_size_count", model="minilm_embedding") > 0
    triton = support.runtimes["kb-search"].agent.settings.triton_url
    breaker = REGISTRY.get_sample_value(
        "agentmesh_circuit_breaker_state", {"endpoint": f"triton:{triton}/minilm_embedding"}
    )
    assert breaker == 0  # closed


async def test_an_agent_without_triton_starts_reports_not_ready_and_fails_fast(
    mesh_settings: Settings,
) -> None:
    agent = KbSearchAgent(mesh_settings.replace(triton_url=f"127.0.0.1:{free_port()}", default_deadline=2.0))
    await agent.startup()  # tolerated: it prepares once Triton is reachable
    try:
        assert await agent.ready() is False
        runner = SkillRunner(agent)
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            await runner.invoke(Invocation(skill="search_articles", input={"query": "refund"}))
        assert time.monotonic() - started < 2.0
    finally:
        await agent.shutdown()


# --- triage -------------------------------------------------------------------------------------------------


async def test_triage_gets_the_intent_of_the_example_tickets_right(support: Support) -> None:
    answers = await asyncio.gather(
        *(support.call("triage", "classify_ticket", ticket_input(t)) for t in TICKETS)
    )
    results = {t.id: answer for t, answer in zip(TICKETS, answers, strict=True)}
    correct = [t.id for t in TICKETS if results[t.id]["intent"] == t.expected.intent]
    assert len(correct) / len(TICKETS) >= 0.8, {t.id: results[t.id]["intent"] for t in TICKETS}
    for ticket in TICKETS:
        result = results[ticket.id]
        assert set(result["scores"]) == set(INTENTS)
        assert result["confidence"] == pytest.approx(max(result["scores"].values()), abs=1e-3)
        assert result["reasons"]
    with_priority = [t for t in TICKETS if t.expected.priority]
    assert [results[t.id]["priority"] for t in with_priority] == [t.expected.priority for t in with_priority]


# Held out: (text, intent, article) written after the prototypes, never added to them. They showed three gaps
# in the knowledge base (account details, cancelling an order, where to buy), which got articles.
HELD_OUT = [
    ("I was billed for Plus again although I cancelled last month", "billing", "kb-double-charge"),
    ("Can I return shoes that don't fit and get my money back?", "refund", "kb-returns"),
    ("The parcel came but the box was empty", "shipping", "kb-lost-package"),
    ("How do I change the email address on my profile?", "account", "kb-account-details"),
    ("Do you ship to Canada and how long does it take?", "shipping", "kb-international-shipping"),
    ("The new TV has dead pixels in the corner of the screen", "technical", "kb-warranty"),
    ("Please cancel order NW-555, I ordered by mistake", "cancellation", "kb-cancel-order"),
    ("Do you have a physical shop in Lyon?", "other", "kb-where-to-buy"),
    ("My card was declined at checkout but the money was taken", "billing", "kb-payment-methods"),
    ("The robot vacuum won't connect to my wifi", "technical", "kb-device-setup"),
    ("I keep getting a code for two-factor login but my phone is lost", "account", "kb-two-factor"),
    ("You promised a refund two weeks ago and I still have nothing.", "refund", "kb-refund-policy"),
]


async def test_triage_and_retrieval_generalise_to_tickets_they_were_not_tuned_on(support: Support) -> None:
    triaged = await asyncio.gather(
        *(support.call("triage", "classify_ticket", {"text": t}) for t, _, _ in HELD_OUT)
    )
    found = await asyncio.gather(
        *(support.call("kb-search", "search_articles", {"query": t, "top_k": 3}) for t, _, _ in HELD_OUT)
    )
    intents_right = sum(r["intent"] == intent for r, (_, intent, _) in zip(triaged, HELD_OUT, strict=True))
    articles_right = sum(
        article in [a["article_id"] for a in f["articles"]]
        for f, (_, _, article) in zip(found, HELD_OUT, strict=True)
    )
    assert intents_right >= 10, [r["intent"] for r in triaged]
    assert articles_right >= 10, [[a["article_id"] for a in f["articles"]] for f in found]


# Written after the glossary (agents/_support/gloss.yaml), never used to tune it: Spanish, German and French
# tickets, which the English embedding model reads through their English gloss.
FOREIGN = [
    ("Mi pedido no ha llegado todavía y ya han pasado dos semanas. ¿Dónde está?", "shipping",
     {"kb-shipping-delays", "kb-track-order", "kb-lost-package"}),
    ("Ich möchte mein Passwort zurücksetzen, aber ich bekomme keine E-Mail.", "account", {"kb-password-reset"}),
    ("Bonjour, je voudrais télécharger la facture du mois dernier pour ma comptabilité.", "billing",
     {"kb-invoices"}),
    ("Quiero exportar todos mis clientes a una hoja de cálculo. ¿Cómo se hace?", "data", {"kb-data-export"}),
    ("Die Lampe kam kaputt an. Ich möchte mein Geld zurück.", "refund", {"kb-damaged-items", "kb-refund-policy"}),
    ("Comment ajouter un utilisateur à notre forfait équipe ?", "plans", {"kb-team-seats", "kb-team-members"}),
    ("Wie erstelle ich einen neuen API-Schlüssel für unsere Integration?", "integrations", {"kb-api-keys"}),
    ("Mon compte a été piraté, quelqu'un a changé mon adresse e-mail !", "account", {"kb-account-security"}),
]


async def test_tickets_in_spanish_german_and_french_are_triaged_and_answered(support: Support) -> None:
    triaged = await asyncio.gather(
        *(support.call("triage", "classify_ticket", {"text": t}) for t, _, _ in FOREIGN)
    )
    found = await asyncio.gather(
        *(support.call("kb-search", "search_articles", {"query": t, "top_k": 3}) for t, _, _ in FOREIGN)
    )
    intents = [r["intent"] for r in triaged]
    articles = [[a["article_id"] for a in f["articles"]] for f in found]
    assert sum(got == want for got, (_, want, _) in zip(intents, FOREIGN, strict=True)) >= 7, intents
    # A confident match that answers the ticket among the first three (none is "no confident match").
    assert all(f["confident"] for f in found), [f["best_score"] for f in found]
    assert sum(bool(set(got) & want) for got, (_, _, want) in zip(articles, FOREIGN, strict=True)) >= 7, articles


async def test_triage_reports_the_models_it_used(support: Support) -> None:
    response = await support.invoke("triage", "classify_ticket", ticket_input(TICKETS[0]))
    assert {(u.model_name, u.model_version) for u in response.model_usages} == {
        ("minilm_embedding", "1"),
        ("sentiment", "1"),
    }


async def test_a_ticket_without_text_is_invalid_argument(support: Support) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await support.call("triage", "classify_ticket", {"subject": "Help"})
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input.text" in (failure.value.details() or "")


# Tickets with nothing to go on: symbols, digits, punctuation, a script the models do not cover, a greeting.
NO_SIGNAL = [
    "😡😡😡",
    "123456 7890",
    "?!?!",
    "我的订单还没到",
    "注文した商品がまだ届きません",
    "สินค้ายังไม่มาถึง",
    "لم يصل طلبي بعد",
    "hello",
]


@pytest.mark.parametrize("text", NO_SIGNAL)
async def test_a_ticket_with_nothing_to_go_on_is_other_at_low_confidence_and_not_answered_about_privacy(
    support: Support, text: str
) -> None:
    ticket = {"text": text}
    triage, retrieved = await asyncio.gather(
        support.call("triage", "classify_ticket", ticket),
        support.call("kb-search", "search_articles", {"query": text, "top_k": 3}),
    )
    # The catch-all intent at the confidence of no evidence, not a confident guess (it was "privacy").
    assert triage["intent"] == "other", triage["reasons"]
    assert triage["confidence"] < 0.1 and triage["confidence"] == pytest.approx(triage["scores"]["other"])
    assert "to go on" in triage["reasons"][0]
    draft = await support.call(
        "responder",
        "draft_reply",
        {"ticket": ticket, "intent": triage["intent"], "articles": retrieved.get("articles", [])},
    )
    reply = draft["reply"].lower()
    assert "thank you for your message" in reply or "thank you for taking the time" in reply, reply
    assert "personal data" not in reply and "privacy" not in reply, reply
    assert not [topic for topic in TOPICS.values() if topic in reply], reply  # no topic the ticket never named


SHORT_REAL = [
    ("refund please", "refund"),
    ("app crashes", "technical"),
    ("Where is my order?", "shipping"),
    ("I forgot my password", "account"),
    ("Ich möchte mein Geld zurück", "refund"),
    ("¿Dónde está mi pedido?", "shipping"),
    ("Je veux annuler mon abonnement", "cancellation"),
]


async def test_short_real_tickets_are_not_taken_for_tickets_with_nothing_to_go_on(support: Support) -> None:
    triaged = await asyncio.gather(
        *(support.call("triage", "classify_ticket", {"text": t}) for t, _ in SHORT_REAL)
    )
    assert [(r["intent"], r["confidence"] > 0.5) for r in triaged] == [(i, True) for _, i in SHORT_REAL], [
        r["reasons"][0] for r in triaged
    ]


# --- sentiment ----------------------------------------------------------------------------------------------


async def test_angry_tickets_score_negative_and_thankful_ones_positive(support: Support) -> None:
    answers = await asyncio.gather(
        *(support.call("sentiment", "score_sentiment", {"text": t.text}) for t in TICKETS)
    )
    scores = {t.id: answer for t, answer in zip(TICKETS, answers, strict=True)}
    negative = [t.id for t in TICKETS if t.expected.sentiment == "negative"]
    positive = [t.id for t in TICKETS if t.expected.sentiment == "positive"]
    assert negative and positive
    for ticket_id in negative:
        assert scores[ticket_id]["label"] == "negative" and scores[ticket_id]["score"] <= -0.2, scores[
            ticket_id
        ]
    for ticket_id in positive:
        assert scores[ticket_id]["label"] == "positive" and scores[ticket_id]["score"] >= 0.4, scores[
            ticket_id
        ]
    # The angriest ticket is the furious late delivery, the happiest the thank-you note.
    ranked = sorted(scores, key=lambda ticket_id: scores[ticket_id]["score"])
    assert ranked[0] == "t02-angry-late-delivery" and ranked[-1] == "t06-thank-you"


# --- knowledge base -----------------------------------------------------------------------------------------


async def test_kb_search_retrieves_the_right_article_for_every_ticket(support: Support) -> None:
    top_hits = 0
    for ticket in TICKETS:
        query = f"{ticket.subject} {ticket.text}"
        articles = (await support.call("kb-search", "search_articles", {"query": query, "top_k": 3}))[
            "articles"
        ]
        ids = [a["article_id"] for a in articles]
        assert len(ids) == 3 and set(ids) & set(ticket.expected.articles), (ticket.id, ids)
        top_hits += ids[0] in ticket.expected.articles
        scores = [a["score"] for a in articles]
        assert scores == sorted(scores, reverse=True)
        assert all(a["title"] and a["snippet"] for a in articles)
    assert top_hits / len(TICKETS) >= 0.75


async def test_refund_questions_find_the_refund_policy_and_nonsense_scores_low(support: Support) -> None:
    refund = await support.call(
        "kb-search", "search_articles", {"query": "How do I get my money back?", "top_k": 1}
    )
    assert [a["article_id"] for a in refund["articles"]] == ["kb-refund-policy"]
    weather = await support.call(
        "kb-search", "search_articles", {"query": "Lovely sunny weather on the beach", "top_k": 1}
    )
    assert weather["best_score"] < refund["articles"][0]["score"] - 0.2
    assert not weather["confident"] and weather["articles"] == []  # nothing unrelated is cited


# --- crm ------------------------------------------------------------------------------------------------------


async def test_crm_masks_pii_for_a_caller_that_may_not_see_it(support: Support) -> None:
    result = await support.call(
        "crm", "lookup_customer", {"email": "maria.lopez@example.com", "include_pii": True}
    )
    assert result["found"] and result["masked"]
    customer = result["customer"]
    assert (customer["customer_id"], customer["name"]) == ("C-1001", "Maria Lopez")
    assert (
        customer["email"] == "m***@e***.com"
        and "612" not in customer["phone"]
        and "Calle" not in customer["address"]
    )
    assert customer["orders"][0]["order_id"] == "NW-10482"
    assert find_pii(str(result)) == []


def step_token(settings: Settings, audience: str, *, task_id: str = "task-support") -> str:
    """A step token for ``audience`` with scope pii:read, minted as the planner (the test CA's certificate)."""
    planner = DelegationIssuer.from_settings(settings, "service", "planner")
    return planner.issue(
        kind=TokenKind.STEP,
        audience=audience,
        subject="user-42",
        tenant="acme",
        scopes=["pii:read"],
        task_id=task_id,
        step_id="lookup",
    )


async def test_crm_shows_pii_to_the_planner_acting_for_a_user_who_asks(support: Support) -> None:
    crm = support.runtimes["crm"]
    token = step_token(crm.settings, crm.spiffe_id)
    result = await support.call(
        "crm", "lookup_customer", {"customer_id": "C-1002", "include_pii": True}, delegation_token=token
    )
    assert result["found"] and not result["masked"]
    assert (result["customer"]["email"], result["customer"]["phone"]) == (
        "tom.becker@example.com",
        "+49 151 2345 6789",
    )
    unasked = await support.call("crm", "lookup_customer", {"customer_id": "C-1002"}, delegation_token=token)
    assert unasked["masked"] and unasked["customer"]["email"] == "t***@e***.com"


async def test_crm_masks_for_a_forged_token(
    mesh_settings: Settings, issue_identity: IssueIdentity, tmp_path: Path
) -> None:
    issue_identity("service", "planner")
    audience = "spiffe://agentmesh.test/agent/support/crm"
    agent = CrmAgent(mesh_settings, database_url=f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
    await agent.startup()
    try:
        runner = SkillRunner(agent, verifier=DelegationVerifier.from_settings(mesh_settings, audience))

        async def lookup(token: str) -> dict[str, Any]:
            invocation = Invocation(
                skill="lookup_customer",
                input={"customer_id": "C-1003", "include_pii": True},
                task_id="task-support",
                caller=planner_identity("agentmesh.test"),
                delegation_token=token,
            )
            return (await runner.invoke(invocation)).output

        good = step_token(mesh_settings, audience)
        assert (await lookup(good))["customer"]["phone"] == "+44 7700 900123"
        forged = await lookup(good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"))
        assert forged["masked"] and forged["customer"]["phone"] == "+** **** ****23"
    finally:
        await agent.shutdown()


async def test_crm_unknown_customers_and_missing_keys(support: Support) -> None:
    assert (await support.call("crm", "lookup_customer", {"email": "nobody@example.com"}))["found"] is False
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await support.call("crm", "lookup_customer", {})
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_the_planner_may_invoke_the_crm(support: Support) -> None:
    request = agent_pb2.InvokeRequest(skill="lookup_customer")
    request.input.update({"email": "maria.lopez@example.com"})
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await support.ops["crm"].Invoke(request, timeout=10)
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- responder and quality check -------------------------------------------------------------------------------


async def draft_for(
    support: Support, ticket: ExampleTicket, feedback: list[str] | None = None
) -> dict[str, Any]:
    """Triage, retrieval and lookup (concurrently, as the planner's DAG runs them), then the draft."""
    query = f"{ticket.subject} {ticket.text}"
    triage, retrieved, found = await asyncio.gather(
        support.call("triage", "classify_ticket", ticket_input(ticket)),
        support.call("kb-search", "search_articles", {"query": query, "top_k": 3}),
        support.call("crm", "lookup_customer", {"email": ticket.email}),
    )
    articles, customer = retrieved["articles"], found["customer"]
    draft = await support.call(
        "responder",
        "draft_reply",
        {
            "ticket": ticket_input(ticket),
            "intent": triage["intent"],
            "articles": articles,
            "customer": customer,
            "feedback": feedback or [],
        },
    )
    return {"draft": draft, "articles": articles, "customer": customer}


async def review(
    support: Support, ticket: ExampleTicket, reply: str, citations: list[str], articles: list[dict[str, Any]]
) -> dict[str, Any]:
    return await support.call(
        "quality-check",
        "check_reply",
        {"ticket": ticket_input(ticket), "reply": reply, "citations": citations, "articles": articles},
    )


async def test_every_draft_is_grounded_personal_and_passes_review(support: Support) -> None:
    cases = await asyncio.gather(*(draft_for(support, ticket) for ticket in TICKETS))
    for ticket, case in zip(TICKETS, cases, strict=True):
        draft, articles = case["draft"], case["articles"]
        reply = draft["reply"]
        first = case["customer"]["name"].split()[0]
        assert reply.startswith(f"Hi {first},"), reply
        assert draft["citations"] and set(draft["citations"]) <= {a["article_id"] for a in articles}
        assert all(f"[{c}]" in reply for c in draft["citations"])
        assert draft["model"] == "extractive/minilm_embedding:1"
        assert find_pii(reply) == [] and case["customer"]["name"].split()[-1] not in reply
        named = [o["order_id"] for o in case["customer"]["orders"] if o["order_id"] in ticket.text]
        assert all(order_id in reply for order_id in named), (ticket.id, named)
        verdict = await review(support, ticket, reply, draft["citations"], articles)
        assert verdict["passed"], (ticket.id, verdict)


async def test_a_second_draft_embeds_only_the_new_ticket(support: Support) -> None:
    def rows_embedded() -> float:
        return (
            REGISTRY.get_sample_value(
                "agentmesh_triton_request_batch_size_sum", {"model": "minilm_embedding"}
            )
            or 0.0
        )

    ticket = by_id("t05-cancel-subscription")
    case = await draft_for(support, ticket)
    data = {
        "ticket": {"text": "Please cancel my Plus membership."},
        "intent": "cancellation",
        "articles": case["articles"],
    }
    before = rows_embedded()
    first = await support.invoke("responder", "draft_reply", data)
    after_first = rows_embedded()
    data["ticket"] = {"text": "How do I stop Northwind Plus from renewing?"}
    second = await support.invoke("responder", "draft_reply", data)
    assert rows_embedded() - after_first == 1  # the article sentences came from the cache
    assert after_first - before == 1  # draft_for already embedded them through this responder
    assert [(u.model_name, u.model_version) for u in second.model_usages] == [("minilm_embedding", "1")]
    assert json_format.MessageToDict(first.output)["citations"] == ["kb-cancel-subscription"]


async def test_the_responder_streams_its_progress_then_the_draft(support: Support) -> None:
    ticket = by_id("t08-change-address")
    case = await draft_for(support, ticket)
    request = agent_pb2.InvokeRequest(skill="draft_reply")
    request.input.update({"ticket": ticket_input(ticket), "intent": "shipping", "articles": case["articles"]})
    stream = support.planner["responder"].InvokeStream(
        agent_pb2.InvokeStreamRequest(invocation=request), timeout=30
    )
    events = [event async for event in stream]
    assert [e.WhichOneof("event") for e in events] == ["progress", "progress", "result"]
    assert events[0].progress.message.startswith("ranking") and events[1].progress.fraction == pytest.approx(
        0.8
    )
    assert json_format.MessageToDict(events[2].result.output)["citations"][0] == "kb-change-address"


async def test_a_refund_reply_quotes_the_refund_rules(support: Support) -> None:
    case = await draft_for(support, by_id("t10-refund-unwanted"))
    draft = case["draft"]
    assert draft["citations"][0] == "kb-refund-policy"
    assert re.search(r"refund .*within 30 days|within 30 days", draft["reply"])
    verdict = await review(
        support, by_id("t10-refund-unwanted"), draft["reply"], draft["citations"], case["articles"]
    )
    assert verdict["passed"] and verdict["score"] >= 0.9 and verdict["relevance"] >= 0.5


async def test_review_fails_a_draft_that_leaks_a_phone_number_or_cites_nothing(support: Support) -> None:
    ticket = by_id("t01-damaged-blender")
    case = await draft_for(support, ticket)
    draft, articles = case["draft"], case["articles"]
    leaked = draft["reply"].replace(
        "Kind regards", "You can call Maria back on +34 612 345 678.\n\nKind regards"
    )
    verdict = await review(support, ticket, leaked, draft["citations"], articles)
    assert not verdict["passed"] and any(r.startswith("pii:") for r in verdict["reasons"])
    uncited = await review(support, ticket, draft["reply"], [], articles)
    assert not uncited["passed"] and any("cites no retrieved article" in r for r in uncited["reasons"])
    assert uncited["score"] < 1.0


async def test_review_fails_an_off_topic_paragraph_hidden_after_a_good_start(support: Support) -> None:
    ticket = by_id("t10-refund-unwanted")
    case = await draft_for(support, ticket)
    wifi = (
        await support.call("kb-search", "search_articles", {"query": "connect my device to wifi", "top_k": 1})
    )["articles"]
    assert wifi[0]["article_id"] == "kb-device-setup"
    tail = (
        'The device must be within range of a 2.4 GHz Wi-Fi network. (see "Device setup" [kb-device-setup])'
    )
    reply = case["draft"]["reply"].replace(
        "If anything is still unclear", f"{tail}\n\nIf anything is still unclear"
    )
    verdict = await review(
        support, ticket, reply, [*case["draft"]["citations"], "kb-device-setup"], case["articles"] + wifi
    )
    assert verdict["relevance"] >= 0.5  # the reply as a whole still reads as on-topic
    last = len(case["draft"]["citations"]) + 1  # the appended paragraph is the last cited one
    assert not verdict["passed"] and verdict["reasons"][0].startswith(
        f"relevance: cited paragraph {last} ([kb-device-setup]) is off-topic"
    )  # named, so that the redraft can leave that article out


async def test_an_off_topic_draft_fails_and_the_regenerated_one_passes(support: Support) -> None:
    ticket = by_id("t04-double-charge")
    password_articles = (
        await support.call("kb-search", "search_articles", {"query": "reset my password", "top_k": 2})
    )["articles"]
    wrong = await support.call(
        "responder",
        "draft_reply",
        {"ticket": {"text": "I forgot my password"}, "intent": "account", "articles": password_articles},
    )
    case = await draft_for(support, ticket)
    verdict = await review(
        support, ticket, wrong["reply"], wrong["citations"], case["articles"] + password_articles
    )
    assert not verdict["passed"] and verdict["reasons"][0].startswith("relevance:")
    redraft = await draft_for(support, ticket, feedback=verdict["reasons"])
    assert redraft["draft"]["reply"] != case["draft"]["reply"]  # the feedback changed the draft
    again = await review(
        support, ticket, redraft["draft"]["reply"], redraft["draft"]["citations"], redraft["articles"]
    )
    assert again["passed"], again


async def test_the_same_reasons_twice_still_give_a_new_draft(support: Support) -> None:
    # The playbook's third round gets the second round's reasons, which can repeat the first round's: the same
    # reasons make the same plan, so without the rejected draft the responder would write it again word for word.
    ticket = by_id("t04-double-charge")
    articles = (
        await support.call(
            "kb-search", "search_articles", {"query": f"{ticket.subject} {ticket.text}", "top_k": 3}
        )
    )["articles"]
    reasons = ["ask: the ticket asks about 'shipping' but the reply answers 'billing' (overlap 0.07 < 0.15)"]
    request = {"ticket": ticket_input(ticket), "intent": "billing", "articles": articles, "feedback": reasons}
    second = await support.call("responder", "draft_reply", request)
    assert (await support.call("responder", "draft_reply", request))["reply"] == second[
        "reply"
    ]  # deterministic
    third = await support.call("responder", "draft_reply", {**request, "previous_reply": second["reply"]})
    assert third["reply"] != second["reply"]
    assert third["citations"] and set(third["citations"]) <= {a["article_id"] for a in articles}
    fourth = await support.call("responder", "draft_reply", {**request, "previous_reply": third["reply"]})
    assert fourth["reply"] != third["reply"]


def test_the_support_playbook_gives_each_redraft_the_rejected_draft() -> None:
    from agentmesh.services.planner.playbooks import PlaybookLibrary

    plan = PlaybookLibrary.shipped().get("support").render("a ticket")
    inputs = {s["id"]: s.get("input", {}) for s in plan["steps"]}
    assert "previous_reply" not in inputs["responder_1"]
    assert inputs["responder_2"]["previous_reply"] == "${steps.responder_1.output.reply}"
    assert inputs["responder_3"]["previous_reply"] == "${steps.responder_2.output.reply}"


ODD_TICKETS = [
    ("", "?"),
    ("", "   \n\t  ok  "),
    ("HELP", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"),
    ("订单", "我的订单三个星期还没到，我很生气。"),  # noqa: RUF001 (Chinese punctuation)
    ("طلب", "لم يصل طلبي منذ ثلاثة أسابيع"),
    ("emoji", "😡😡😡 my parcel 📦 never came 🙄"),
    ("<script>alert(1)</script>", "<b>refund</b> please &amp; thanks <img src=x onerror=alert(1)>"),
    ("SQL", "'; DROP TABLE tasks; -- where is my order?"),
    ("template", "My name is ${task.input.ticket.email} and {{7*7}} and %s %d"),
    ("long", "I was charged twice. " * 900),
    ("only pii", "jane.doe@example.com +1 415 555 0100 4111 1111 1111 1111"),
]


@pytest.mark.parametrize(("subject", "text"), ODD_TICKETS, ids=[t[0] or t[1][:8] for t in ODD_TICKETS])
async def test_odd_tickets_get_a_reply_or_an_escalation_never_an_error(
    support: Support, subject: str, text: str
) -> None:
    ticket = {"subject": subject, "text": text}
    triage, sentiment, retrieved = await asyncio.gather(
        support.call("triage", "classify_ticket", ticket),
        support.call("sentiment", "score_sentiment", {"text": text}),
        support.call("kb-search", "search_articles", {"query": f"{subject} {text}", "top_k": 3}),
    )
    assert triage["intent"] and triage["priority"]
    assert sentiment["label"] in ("negative", "neutral", "positive") and -1.0 <= sentiment["score"] <= 1.0
    draft = await support.call(
        "responder",
        "draft_reply",
        {"ticket": ticket, "intent": triage["intent"], "articles": retrieved.get("articles", [])},
    )
    assert draft["reply"].strip()
    assert draft.get("escalate") or draft["citations"]  # a cited answer, or a person takes over
    for secret in ("jane.doe@example.com", "4111 1111 1111 1111", "555 0100", "<script>", "onerror"):
        assert secret not in draft["reply"]
    verdict = await support.call(
        "quality-check",
        "check_reply",
        {
            "ticket": ticket,
            "reply": draft["reply"],
            "citations": draft["citations"],
            "articles": retrieved.get("articles", []),
        },
    )
    assert isinstance(verdict["passed"], bool) and (verdict["passed"] or verdict["reasons"])
