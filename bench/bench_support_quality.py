"""Support answer quality on the labelled evaluation set (agents/examples/eval): accuracy per skill on the
dev split and on the held-out split, the gap between them, and a confusion table for intent.

Every figure comes from the agents themselves, in-process, on a real (local, CPU) Triton:

- triage: intent and priority accuracy (plus the intent confusion table);
- sentiment: label accuracy;
- kb-search: top-1 and top-3 article accuracy over tickets the knowledge base answers, and how often a
  ticket it does not answer gets "no confident match" (so nothing unrelated is cited);
- quality-check: false rejects of good drafts (the responder's draft from the labelled intent and articles,
  for the right customer) and the catch rate of deliberately bad drafts made from them: off-topic (another
  ticket's answer), an uncited claim, another customer's personal data, the wrong customer.

The held-out split is never used to tune anything; ``--calibrate-sentiment`` fits the sentiment blend on
the dev split only and prints the config values.

    .venv/bin/python bench/bench_support_quality.py            # both splits, its own Triton
    .venv/bin/python bench/bench_support_quality.py --split dev --triton-url 127.0.0.1:8001
    .venv/bin/python bench/bench_support_quality.py --calibrate-sentiment
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentmesh._settings import Settings
from agentmesh.agent import SkillContext
from agentmesh.agents._support import Article, Ticket, split_sentences
from agentmesh.agents._support._triton import MAX_SENTENCES
from agentmesh.agents.examples import EvalTicket, load_eval
from agentmesh.agents.kb_search import KbSearchAgent, SearchInput, load_articles
from agentmesh.agents.quality_check import CheckInput, QualityCheckAgent
from agentmesh.agents.responder import DraftInput, ResponderAgent
from agentmesh.agents.sentiment import SentimentAgent, SentimentInput
from agentmesh.agents.triage import INTENTS, TriageAgent
from agentmesh.inference import InferenceClient, LocalTriton, prepare_model_repository

_CLAIMS = (
    "As a goodwill gesture we will also add a 50 euro voucher to your account.",
    "Your case has already been resolved and no further action is needed on your side.",
    "We have upgraded you to the Business plan free of charge for a whole year.",
    "Our engineers confirmed that this was caused by your bank and not by us.",
    "You will receive a full refund within 24 hours without returning anything.",
    "This is covered by our lifetime warranty on every product we sell.",
)
BAD_KINDS = ("off-topic", "uncited claim", "another customer's PII", "wrong customer")


def _ctx(skill: str) -> SkillContext:
    return SkillContext(agent_name="bench", skill=skill)


def _customers() -> list[dict[str, Any]]:
    path = Path(__file__).resolve().parent.parent / "agents" / "crm" / "customers.json"
    return list(json.loads(path.read_text(encoding="utf-8")))


@dataclass
class Agents:
    triage: TriageAgent
    sentiment: SentimentAgent
    kb: KbSearchAgent
    responder: ResponderAgent
    review: QualityCheckAgent

    @property
    def all(self) -> tuple[Any, ...]:
        return (self.triage, self.sentiment, self.kb, self.responder, self.review)


@dataclass
class Figures:
    """Counts for one split."""

    n: int = 0
    intent: int = 0
    priority: int = 0
    sentiment: int = 0
    answerable: int = 0
    top1: int = 0
    top3: int = 0
    unanswerable: int = 0
    no_match: int = 0
    good: int = 0
    false_rejects: int = 0
    escalations: int = 0
    escalations_flagged: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    caught: Counter[str] = field(default_factory=Counter)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[str] = field(default_factory=list)


def _customer_for(ticket: EvalTicket, crm: list[dict[str, Any]]) -> dict[str, Any]:
    known = next((c for c in crm if c["email"] == ticket.email), None)
    return known or {"name": ticket.name, "email": ticket.email, "orders": []}


def _other_customer(ticket: EvalTicket, crm: list[dict[str, Any]], index: int) -> dict[str, Any]:
    others = [c for c in crm if c["email"] != ticket.email and c["orders"]]
    return others[index % len(others)]


async def _good_draft(
    agents: Agents, ticket: EvalTicket, articles: list[Article], customer: dict[str, Any]
) -> tuple[Ticket, str, list[str]]:
    message = Ticket(subject=ticket.subject, text=ticket.text)
    draft = await agents.responder.draft_reply(
        DraftInput(ticket=message, intent=ticket.intent, articles=articles, customer=customer), _ctx("draft")
    )
    return message, draft.reply, draft.citations


def _bad_drafts(
    reply: str,
    citations: list[str],
    index: int,
    customer: dict[str, Any],
    other: dict[str, Any],
    off_topic: tuple[str, list[str], list[Article]],
) -> list[tuple[str, str, list[str], list[Article]]]:
    """(kind, reply, citations, extra articles) for each kind of deliberately bad draft."""
    closing = "\n\nIf anything is still unclear"
    claim = _CLAIMS[index % len(_CLAIMS)]
    with_claim = reply.replace(closing, f"\n\n{claim}{closing}", 1)
    pii = f"We have also sent a copy of this reply to {other['email']} and to {other['phone']}."
    with_pii = reply.replace(closing, f"\n\n{pii}{closing}", 1)
    name = str(customer.get("name", "")).split()[0] if customer.get("name") else ""
    other_first = str(other["name"]).split()[0]
    order = other["orders"][0]
    wrong = reply.replace(f"Hi {name},", f"Hi {other_first},", 1) if name else reply
    wrong = wrong.replace(
        "\n\n", f"\n\nI can see your order {order['order_id']} ({order['item']}), which is on its way. ", 1
    ).replace(", which is on its way. ", ", which is on its way.\n\n", 1)
    return [
        ("off-topic", off_topic[0], off_topic[1], off_topic[2]),
        ("uncited claim", with_claim, citations, []),
        ("another customer's PII", with_pii, citations, []),
        ("wrong customer", wrong, citations, []),
    ]


async def evaluate(agents: Agents, split: str) -> Figures:
    """Every skill on every ticket of ``split``."""
    tickets = load_eval(split)  # type: ignore[arg-type]
    crm = _customers()
    kb = {a.article_id: a for a in load_articles()}
    figures = Figures()

    def gold_articles(ticket: EvalTicket) -> list[Article]:
        return [Article(article_id=i, title=kb[i].title, body=kb[i].body) for i in ticket.articles]

    for index, ticket in enumerate(tickets):
        message = Ticket(subject=ticket.subject, text=ticket.text)
        triaged, felt, found = await asyncio.gather(
            agents.triage.classify_ticket(message, _ctx("classify")),
            agents.sentiment.score_sentiment(SentimentInput(text=ticket.text), _ctx("sentiment")),
            agents.kb.search_articles(SearchInput(query=message.as_text(), top_k=3), _ctx("search")),
        )
        figures.n += 1
        figures.intent += triaged.intent == ticket.intent
        figures.confusion[(ticket.intent, triaged.intent)] += 1
        figures.priority += triaged.priority == ticket.priority
        figures.sentiment += felt.label == ticket.sentiment
        if felt.label != ticket.sentiment:
            figures.misses.append(
                f"{ticket.id} sentiment {ticket.sentiment} -> {felt.label} ({felt.score:+.2f})"
            )
        if triaged.intent != ticket.intent:
            figures.misses.append(f"{ticket.id} intent {ticket.intent} -> {triaged.intent}")
        found_ids = [a.article_id for a in found.articles]
        if ticket.articles:
            figures.answerable += 1
            figures.top1 += bool(found_ids) and found_ids[0] in ticket.articles
            figures.top3 += bool(set(found_ids[:3]) & set(ticket.articles))
            if not (found_ids and found_ids[0] in ticket.articles):
                figures.misses.append(f"{ticket.id} article {ticket.articles} -> {found_ids}")
        else:
            figures.unanswerable += 1
            figures.no_match += not found.confident
            if found.confident:
                figures.misses.append(f"{ticket.id} no article expected -> {found_ids}")

        customer = _customer_for(ticket, crm)
        articles = gold_articles(ticket)
        message, reply, citations = await _good_draft(agents, ticket, articles, customer)
        verdict = await agents.review.check_reply(
            CheckInput(
                ticket=message, reply=reply, citations=citations, articles=articles, customer=customer
            ),
            _ctx("check"),
        )
        if not ticket.articles:
            figures.escalations += 1
            figures.escalations_flagged += verdict.action == "escalate"
            continue
        figures.good += 1
        if not verdict.passed:
            figures.false_rejects += 1
            figures.misses.append(f"{ticket.id} good draft rejected: {verdict.reasons}")
        other_ticket = next(
            t
            for t in tickets[index + 1 :] + tickets[:index]
            if t.intent != ticket.intent and t.articles and t.lang == "en"
        )
        other_articles = gold_articles(other_ticket)
        off_topic = await agents.responder.draft_reply(
            DraftInput(
                ticket=Ticket(subject=other_ticket.subject, text=other_ticket.text),
                intent=other_ticket.intent,
                articles=other_articles,
                customer=customer,
            ),
            _ctx("draft"),
        )
        other = _other_customer(ticket, crm, index)
        for kind, bad_reply, bad_citations, extra in _bad_drafts(
            reply, citations, index, customer, other, (off_topic.reply, off_topic.citations, other_articles)
        ):
            checked = await agents.review.check_reply(
                CheckInput(
                    ticket=message,
                    reply=bad_reply,
                    citations=bad_citations,
                    articles=articles + extra,
                    customer=customer,
                ),
                _ctx("check"),
            )
            figures.bad[kind] += 1
            figures.caught[kind] += not checked.passed
            if checked.passed:
                figures.misses.append(f"{ticket.id} bad draft passed: {kind}")
    return figures


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}% ({part}/{whole})" if whole else "n/a"


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


def report(results: dict[str, Figures]) -> str:
    """Markdown: the per-skill table (with the dev - held-out gap) and the intent confusion tables."""
    rows = [
        ("intent (triage)", lambda f: (f.intent, f.n), ">= 90%"),
        ("priority (triage)", lambda f: (f.priority, f.n), "-"),
        ("sentiment label", lambda f: (f.sentiment, f.n), ">= 90%"),
        ("top-1 article (kb-search)", lambda f: (f.top1, f.answerable), ">= 90%"),
        ("top-3 article (kb-search)", lambda f: (f.top3, f.answerable), ">= 97%"),
        ("no confident match when none answers", lambda f: (f.no_match, f.unanswerable), "-"),
        (
            "bad drafts caught (quality-check, all kinds)",
            lambda f: (sum(f.caught.values()), sum(f.bad.values())),
            ">= 90%",
        ),
        *(
            (f"  caught: {kind}", (lambda k: lambda f: (f.caught[k], f.bad[k]))(kind), ">= 90%")
            for kind in BAD_KINDS
        ),
        ("good drafts falsely rejected", lambda f: (f.false_rejects, f.good), "<= 5%"),
        ("unanswerable tickets escalated", lambda f: (f.escalations_flagged, f.escalations), "-"),
    ]
    splits = list(results)
    head = (
        "| skill | "
        + " | ".join(splits)
        + (" | gap (dev - held-out) |" if len(splits) == 2 else "|")
        + " target |"
    )
    lines = [head, "|" + "---|" * (len(splits) + (3 if len(splits) == 2 else 2))]
    for name, get, target in rows:
        cells = [_pct(*get(results[s])) for s in splits]
        gap = ""
        if len(splits) == 2:
            a, b = (_rate(*get(results[s])) for s in splits)
            gap = f" {100 * (a - b):+.1f} pt |"
        lines.append(f"| {name} | " + " | ".join(cells) + f" |{gap} {target} |")
    for split in splits:
        confusion = results[split].confusion
        used = [i for i in INTENTS if any(k[0] == i or k[1] == i for k in confusion)]
        lines += ["", f"Intent confusion, {split} (rows: labelled, columns: triage):", ""]
        lines.append("| | " + " | ".join(used) + " |")
        lines.append("|" + "---|" * (len(used) + 1))
        for gold in used:
            lines.append(
                f"| **{gold}** | " + " | ".join(str(confusion[(gold, p)] or "") for p in used) + " |"
            )
    return "\n".join(lines)


@asynccontextmanager
async def _triton(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    home = Settings.from_env().home.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        repository = prepare_model_repository(home, target=Path(scratch) / "model_repository")
        async with LocalTriton(repository, home=home, log_file=Path(scratch) / "triton.log") as triton:
            yield triton.grpc_url


async def _started(url: str) -> Agents:
    settings = Settings.from_env(triton_url=url, default_deadline=120.0)
    agents = Agents(
        TriageAgent(settings),
        SentimentAgent(settings),
        KbSearchAgent(settings),
        ResponderAgent(settings),
        QualityCheckAgent(settings),
    )
    await asyncio.gather(*(agent.startup() for agent in agents.all))
    for agent in agents.all:
        await agent.ensure_prepared()
    return agents


# --- sentiment calibration (dev only) ---------------------------------------------------------------------


async def _sentiment_features(url: str) -> list[tuple[str, np.ndarray]]:
    client = InferenceClient(url, deadline=60.0)
    try:
        rows = []
        for ticket in load_eval("dev"):
            sentences = split_sentences(ticket.text)[:MAX_SENTENCES]
            texts = [ticket.text, *sentences] if len(sentences) > 1 else [ticket.text]
            column = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
            result = await client.infer("sentiment", {"TEXT": column}, outputs=["FEATURES"])
            rows.append((ticket.sentiment, np.asarray(result.outputs["FEATURES"], dtype=np.float64)))
        return rows
    finally:
        await client.close()


def _message_scores(rows: Sequence[tuple[str, np.ndarray]], p: Sequence[float]) -> np.ndarray:
    lexicon, positive, negative, frustration, margin, bias = p[:6]
    scores = []
    for _, f in rows:
        over = np.maximum(f[:, 3:6] - f[:, 6:7] + margin, 0)  # negative, frustration, positive
        s = np.clip(
            lexicon * f[:, 0]
            + positive * over[:, 2]
            - negative * over[:, 0]
            - frustration * over[:, 1]
            + bias,
            -1,
            1,
        )
        scores.append(
            s[0] if len(s) < 2 else np.clip(0.5 * s[0] + 0.5 * s[1:][np.argmax(np.abs(s[1:]))], -1, 1)
        )
    return np.array(scores)


def _accuracy(rows: Sequence[tuple[str, np.ndarray]], p: Sequence[float]) -> float:
    s = _message_scores(rows, p)
    labels = np.where(s <= -p[6], "negative", np.where(s >= p[7], "positive", "neutral"))
    return float(np.mean(labels == np.array([label for label, _ in rows])))


def _search(
    rows: Sequence[tuple[str, np.ndarray]], rng: np.random.Generator, n: int
) -> tuple[float, list[float]]:
    best: tuple[float, list[float]] = (-1.0, [])
    for _ in range(n):
        p = [rng.uniform(0.2, 1.2), *rng.uniform(0, 6, 3), rng.uniform(-0.05, 0.1), rng.uniform(-0.2, 0.1)]
        p += [rng.uniform(0.1, 0.35), rng.uniform(0.15, 0.4)]
        if (a := _accuracy(rows, p)) > best[0]:
            best = (a, p)
    accuracy, params = best
    for _ in range(n // 2):  # local refinement
        p = [
            x * rng.uniform(0.85, 1.15) if i not in (4, 5) else x + rng.normal(0, 0.02)
            for i, x in enumerate(params)
        ]
        if (a := _accuracy(rows, p)) >= accuracy:
            accuracy, params = a, p
    return accuracy, params


async def calibrate_sentiment(url: str) -> None:
    """Random search of the blend on the dev split, with 5-fold cross-validation as an honest estimate."""
    rows = await _sentiment_features(url)
    rng = np.random.default_rng(2)
    order = rng.permutation(len(rows))
    folds = np.array_split(order, 5)
    held = []
    for fold in folds:
        train = [rows[i] for i in order if i not in set(fold)]
        _, params = _search(train, rng, 800)
        held.append(_accuracy([rows[i] for i in fold], params))
    accuracy, params = _search(rows, rng, 2000)
    names = (
        "lexicon_weight",
        "positive_weight",
        "negative_weight",
        "frustration_weight",
        "neutral_margin",
        "blend_bias",
    )
    print(f"dev accuracy {accuracy:.3f}; 5-fold cross-validated {np.mean(held):.3f}")
    for name, value in zip(names, params, strict=False):
        print(f'parameters: {{ key: "{name}" value: {{ string_value: "{value:.3f}" }} }}')
    print(f"agents/_support/_sentiment.py: NEGATIVE_AT = {-params[6]:.3f}, POSITIVE_AT = {params[7]:.3f}")


async def main(splits: list[str], url: str | None, calibrate: bool) -> None:
    async with _triton(url) as triton_url:
        if calibrate:
            await calibrate_sentiment(triton_url)
            return
        agents = await _started(triton_url)
        try:
            results = {split: await evaluate(agents, split) for split in splits}
        finally:
            await asyncio.gather(*(agent.shutdown() for agent in agents.all))
    print(report(results))
    for split, figures in results.items():
        print(f"\nMisses, {split}:")
        print("\n".join(f"- {m}" for m in figures.misses) or "- none")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=("dev", "heldout", "both"), default="both")
    parser.add_argument("--triton-url", default=None, help="use this running Triton instead of starting one")
    parser.add_argument("--calibrate-sentiment", action="store_true", help="fit the sentiment blend on dev")
    args = parser.parse_args()
    chosen = ["dev", "heldout"] if args.split == "both" else [args.split]
    asyncio.run(main(chosen, args.triton_url, args.calibrate_sentiment))
