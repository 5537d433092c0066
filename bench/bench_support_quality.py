"""Support answer quality on the labelled evaluation set (agents/examples/eval): accuracy per skill on the
dev split and on the held-out split, the gap between them, and a confusion table for intent; the probe and
fresh splits (tickets written after the held-out figures, never calibrated on) on request.

Every figure comes from the agents themselves, in-process, on a real (local, CPU) Triton:

- triage: intent and priority accuracy (plus the intent confusion table);
- sentiment: label accuracy;
- kb-search: top-1 and top-3 article accuracy over tickets the knowledge base answers, and how often a
  ticket it does not answer gets "no confident match" (so nothing unrelated is cited);
- quality-check: false rejects of good drafts (the responder's draft from the labelled intent and articles,
  for the right customer) and the catch rate of deliberately bad drafts made from them: off-topic (another
  ticket's answer), an uncited claim, another customer's personal data, the wrong customer;
- end to end (the playbook's drafting loop on what triage and kb-search returned): a reply sent citing a
  labelled article, no-match tickets escalated, drafts failing three reviews escalated with reasons,
  regenerated drafts differing from the rejected one, double-charge replies about the double charge.

The held-out split is never used to tune anything; ``--calibrate-sentiment`` fits the sentiment model's
head on the dev split only (cross-validated) and, with ``--write``, writes it to the model folder.

    .venv/bin/python bench/bench_support_quality.py            # both splits, its own Triton
    .venv/bin/python bench/bench_support_quality.py --split dev --triton-url 127.0.0.1:8001
    .venv/bin/python bench/bench_support_quality.py --split all     # dev, held-out, probe, fresh, fresh2, fresh3
    .venv/bin/python bench/bench_support_quality.py --split unheld  # the same without held-out
    .venv/bin/python bench/bench_support_quality.py --split fresh
    .venv/bin/python bench/bench_support_quality.py --split fresh2
    .venv/bin/python bench/bench_support_quality.py --split fresh3
    .venv/bin/python bench/bench_support_quality.py --split heldout2  # second held-out split, not in all
    .venv/bin/python bench/bench_support_quality.py --split heldout3  # third held-out split, not in all
    .venv/bin/python bench/bench_support_quality.py --split heldout3 --sentiment-from 4d082a9  # an older model
    .venv/bin/python bench/bench_support_quality.py --calibrate-sentiment --write   # dev only
    .venv/bin/python bench/bench_support_quality.py --calibrate-kb                  # dev only
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np

from agentmesh._settings import Settings
from agentmesh.agent import SkillContext
from agentmesh.agents._support import Article, Ticket
from agentmesh.agents.examples import EvalTicket, load_eval
from agentmesh.agents.examples._eval import Split
from agentmesh.agents.kb_search import KbSearchAgent, SearchInput, load_articles
from agentmesh.agents.kb_search._kb import CONFIDENT_SCORE, KEYWORD_WEIGHT
from agentmesh.agents.quality_check import CheckInput, QualityCheckAgent
from agentmesh.agents.quality_check._checks import MAX_DRAFTS
from agentmesh.agents.responder import DraftInput, ResponderAgent
from agentmesh.agents.sentiment import SentimentAgent, SentimentInput
from agentmesh.agents.triage import INTENTS, TriageAgent
from agentmesh.inference import InferenceClient, LocalTriton, prepare_model_repository

ROOT = Path(__file__).resolve().parent.parent

_CLAIMS = (
    "As a goodwill gesture we will also add a 50 euro voucher to your account.",
    "Your case has already been resolved and no further action is needed on your side.",
    "We have upgraded you to the Business plan free of charge for a whole year.",
    "Our engineers confirmed that this was caused by your bank and not by us.",
    "You will receive a full refund within 24 hours without returning anything.",
    "This is covered by our lifetime warranty on every product we sell.",
)
SENTIMENT_FOLDER = Path(__file__).resolve().parent.parent / "sdk" / "inference" / "models" / "sentiment" / "1"
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
    # End to end: the drafting loop on triage's intent and kb-search's articles.
    sent_cited: int = 0
    unmatched: int = 0
    unmatched_escalated: int = 0
    exhausted: int = 0
    exhausted_with_reasons: int = 0
    revised: int = 0
    revised_differs: int = 0
    double_charge: int = 0
    double_charge_addressed: int = 0


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


_DOUBLE_CHARGE_WORDS = ("duplicate", "charged twice", "two charges")


async def _end_to_end(
    agents: Agents,
    ticket: EvalTicket,
    message: Ticket,
    intent: str,
    found: list[Article],
    customer: dict[str, Any],
    figures: Figures,
) -> None:
    """The playbook's drafting loop on triage's intent and kb-search's articles: draft, review, redraft with
    the reasons, at most :data:`MAX_DRAFTS` drafts; then what a support lead would check of the outcome.
    """
    feedback: list[str] = []
    previous = ""
    for attempt in range(1, MAX_DRAFTS + 1):
        draft = await agents.responder.draft_reply(
            DraftInput(ticket=message, intent=intent, articles=found, customer=customer, feedback=feedback,
                       previous_reply=previous),
            _ctx("draft"),
        )
        if attempt > 1:
            figures.revised += 1
            figures.revised_differs += draft.reply != previous
            if draft.reply == previous:
                figures.misses.append(f"{ticket.id} end to end: draft {attempt} repeats the rejected one")
        verdict = await agents.review.check_reply(
            CheckInput(
                ticket=message,
                reply=draft.reply,
                citations=draft.citations,
                articles=found,
                customer=customer,
                attempt=attempt,
                escalated=draft.escalate,
            ),
            _ctx("check"),
        )
        if verdict.passed or verdict.action == "escalate":
            break
        feedback, previous = verdict.reasons, draft.reply
    if not verdict.passed:
        figures.exhausted += 1
        reasons = [r for r in verdict.reasons if not r.startswith("escalate:")]
        figures.exhausted_with_reasons += verdict.action == "escalate" and bool(reasons)
        figures.misses.append(f"{ticket.id} end to end: escalated after {attempt} drafts: {reasons}")
    if not ticket.articles:
        figures.unmatched += 1
        escalated = draft.escalate and verdict.action == "escalate"
        figures.unmatched_escalated += escalated
        if not escalated:
            figures.misses.append(f"{ticket.id} end to end: no article answers it but not escalated")
        return
    sent = verdict.passed and verdict.action == "send" and bool(set(draft.citations) & set(ticket.articles))
    figures.sent_cited += sent
    if not sent and verdict.passed:
        figures.misses.append(
            f"{ticket.id} end to end: {verdict.action} citing {draft.citations}, labelled {ticket.articles}"
        )
    if "kb-double-charge" in ticket.articles:
        figures.double_charge += 1
        reply = draft.reply.lower()
        addressed = verdict.passed and any(w in reply for w in _DOUBLE_CHARGE_WORDS) and "cancel" not in reply
        figures.double_charge_addressed += addressed
        if not addressed:
            figures.misses.append(f"{ticket.id} end to end: double charge reply misses it: {draft.citations}")


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
        await _end_to_end(agents, ticket, message, triaged.intent, found.articles, customer, figures)
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
        ("end to end: reply sent citing a labelled article", lambda f: (f.sent_cited, f.answerable), "-"),
        ("end to end: no-article tickets escalated", lambda f: (f.unmatched_escalated, f.unmatched), "-"),
        (
            "end to end: failing 3 drafts, escalated with reasons",
            lambda f: (f.exhausted_with_reasons, f.exhausted),
            "-",
        ),
        (
            "end to end: redrafts differ from the rejected draft",
            lambda f: (f.revised_differs, f.revised),
            "-",
        ),
        (
            "end to end: double-charge reply about the double charge",
            lambda f: (f.double_charge_addressed, f.double_charge),
            "-",
        ),
    ]
    splits = list(results)
    gap = "dev" in splits and "heldout" in splits
    head = "| skill | " + " | ".join(splits) + (" | gap (dev - held-out) |" if gap else " |") + " target |"
    lines = [head, "|" + "---|" * (len(splits) + (3 if gap else 2))]
    for name, get, target in rows:
        cells = [_pct(*get(results[s])) for s in splits]
        difference = ""
        if gap:
            a, b = (_rate(*get(results[s])) for s in ("dev", "heldout"))
            difference = f" {100 * (a - b):+.1f} pt |"
        lines.append(f"| {name} | " + " | ".join(cells) + f" |{difference} {target} |")
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


def _models_with_sentiment_from(revision: str, scratch: Path) -> Path:
    """The shipped model repository with its ``sentiment`` folder as it was at git ``revision`` (to compare
    models on the same tickets, in the same run of everything else)."""
    from agentmesh.inference._repository import SOURCE_MODEL_REPOSITORY

    source = scratch / "models"
    shutil.copytree(SOURCE_MODEL_REPOSITORY, source, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(source / "sentiment")
    folder = "sdk/inference/models/sentiment"
    archive = subprocess.run(["git", "archive", revision, folder], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
    shutil.move(str(scratch / folder), source / "sentiment")
    return source


@asynccontextmanager
async def _triton(url: str | None, sentiment_from: str | None = None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    home = Settings.from_env().home.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        source = _models_with_sentiment_from(sentiment_from, Path(scratch)) if sentiment_from else None
        repository = prepare_model_repository(home, source=source, target=Path(scratch) / "model_repository")
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


def _signals_module() -> Any:
    """``signals.py`` of the shipped sentiment model (the head and the signal names), imported by path."""
    path = SENTIMENT_FOLDER / "signals.py"
    spec = importlib.util.spec_from_file_location("sentiment_signals", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _sentiment_features(url: str, tickets: Sequence[EvalTicket]) -> np.ndarray:
    """The served model's FEATURES of each ticket's text (what its head reads)."""
    client = InferenceClient(url, deadline=60.0)
    try:
        rows = []
        for start in range(0, len(tickets), 32):
            column = np.array([[t.text.encode("utf-8")] for t in tickets[start : start + 32]], dtype=object)
            result = await client.infer("sentiment", {"TEXT": column}, outputs=["FEATURES"])
            rows.append(np.asarray(result.outputs["FEATURES"], dtype=np.float64))
        return np.vstack(rows)
    finally:
        await client.close()


def _balance(labels: np.ndarray, power: float) -> np.ndarray:
    counts = np.bincount(labels, minlength=3).astype(np.float64)
    return np.asarray((1.0 / counts[labels]) ** power)


def _cross_validated(
    signals: Any, x: np.ndarray, y: np.ndarray, l2: float, power: float, repeats: int = 3
) -> tuple[float, np.ndarray]:
    """Accuracy of the head over ``repeats`` stratified 5-fold splits, and how often each ticket was wrong."""
    accuracies, wrong = [], np.zeros(len(y), dtype=int)
    for repeat in range(repeats):
        rng = np.random.default_rng(repeat)
        folds: list[list[int]] = [[] for _ in range(5)]
        for label in range(3):
            for k, i in enumerate(rng.permutation(np.flatnonzero(y == label))):
                folds[k % 5].append(int(i))
        predicted = np.zeros(len(y), dtype=int)
        for fold in folds:
            test = np.array(fold)
            train = np.setdiff1d(np.arange(len(y)), test)
            head = signals.Head.fit(x[train], y[train], l2, _balance(y[train], power), steps=600)
            predicted[test] = head.probabilities(x[test]).argmax(axis=1)
        accuracies.append(float(np.mean(predicted == y)))
        wrong += predicted != y
    return float(np.mean(accuracies)), wrong


async def calibrate_sentiment(url: str, write: bool) -> None:
    """Fit the sentiment head on the dev split: the L2 penalty and class balance chosen by repeated 5-fold
    cross-validation (an honest estimate for unseen tickets), then the head fitted on all of dev and written
    to the model folder's ``head.npz``. The held-out split is not read.
    """
    signals = _signals_module()
    tickets = load_eval("dev")
    x = await _sentiment_features(url, tickets)
    y = np.array([signals.CLASSES.index(t.sentiment) for t in tickets])
    results = {
        (l2, power): _cross_validated(signals, x, y, l2, power)
        for l2 in (0.03, 0.1, 0.3, 1.0)
        for power in (0.0, 0.5)
    }
    for (l2, power), (accuracy, _) in results.items():
        print(f"l2 {l2:<5} class balance {power}: 5-fold cross-validated dev accuracy {accuracy:.3f}")
    (l2, power), (accuracy, wrong) = max(results.items(), key=lambda item: (item[1][0], item[0][0]))
    head = signals.Head.fit(x, y, l2, _balance(y, power))
    fitted = float(np.mean(head.probabilities(x).argmax(axis=1) == y))
    print(
        f"chosen l2 {l2}, class balance {power}: cross-validated {accuracy:.3f}, on all of dev {fitted:.3f}"
    )
    print("dev tickets wrong in most cross-validation repeats:")
    for ticket, count in zip(tickets, wrong, strict=True):
        if count >= 2:
            print(f"- {ticket.id} {ticket.sentiment} ({ticket.lang}): {ticket.text[:100]}")
    if write:
        head.save(SENTIMENT_FOLDER / "head.npz")
        print(f"wrote {SENTIMENT_FOLDER / 'head.npz'}")


# --- kb-search calibration (dev only) ----------------------------------------------------------------------


async def _kb_evidence(url: str) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Per dev ticket and article: the best passage's cosine, the keyword phrases found, and the labelled
    articles (indices)."""
    agent = KbSearchAgent(Settings.from_env(triton_url=url, default_deadline=120.0))
    await agent.startup()
    try:
        await agent.ensure_prepared()
        tickets = load_eval("dev")
        queries = [Ticket(subject=t.subject, text=t.text).as_text() for t in tickets]
        vectors = await agent.embed_in_batches(queries, None)
        similarities = vectors @ agent._passage_vectors.T
        owners = np.array([p.article for p in agent.passages])
        cosine = np.stack(
            [similarities[:, owners == a].max(axis=1) for a in range(len(agent.articles))], axis=1
        )
        keywords = np.array([[len(m.find(q)) for m in agent._matchers] for q in queries])
        ids = [a.article_id for a in agent.articles]
        return cosine, keywords, [[ids.index(i) for i in t.articles] for t in tickets]
    finally:
        await agent.shutdown()


def _kb_counts(
    cosine: np.ndarray,
    keywords: np.ndarray,
    gold: list[list[int]],
    rows: np.ndarray,
    setting: tuple[float, float],
) -> np.ndarray:
    """(top-1, top-3, answerable, no match, unanswerable) over ``rows`` with (keyword weight, floor)."""
    weight, floor = setting
    scores = cosine[rows] + weight * np.minimum(keywords[rows], 2)
    order, best = np.argsort(-scores, axis=1), scores.max(axis=1)
    counts = np.zeros(5)
    for j, i in enumerate(rows):
        confident = best[j] >= floor
        if gold[i]:
            counts[0] += confident and order[j, 0] in gold[i]
            counts[1] += confident and bool(set(order[j, :3]) & set(gold[i]))
            counts[2] += 1
        else:
            counts[3] += not confident
            counts[4] += 1
    return counts


def _kb_objective(counts: np.ndarray) -> float:
    return float((counts[0] + counts[1]) / max(counts[2], 1) + 0.5 * counts[3] / max(counts[4], 1))


async def calibrate_kb(url: str) -> None:
    """Grid search of kb-search's keyword weight and confidence floor on the dev split, with 5-fold
    cross-validation of the choice as an estimate for unseen tickets. The held-out split is not read.
    """
    cosine, keywords, gold = await _kb_evidence(url)
    rows = np.arange(len(gold))
    grid = [
        (weight, round(float(floor), 2))
        for weight in (0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4)
        for floor in np.arange(0.25, 0.5, 0.01)
    ]

    def chosen(subset: np.ndarray) -> tuple[float, float]:
        return max(grid, key=lambda g: (_kb_objective(_kb_counts(cosine, keywords, gold, subset, g)), -g[0]))

    held = np.zeros(5)
    for repeat in range(3):
        for fold in np.array_split(np.random.default_rng(repeat).permutation(rows), 5):
            held += _kb_counts(cosine, keywords, gold, fold, chosen(np.setdiff1d(rows, fold)))
    best = chosen(rows)
    counts = _kb_counts(cosine, keywords, gold, rows, best)
    print(f"best on dev: KEYWORD_WEIGHT = {best[0]}, CONFIDENT_SCORE = {best[1]}")
    print(
        f"  dev top-1 {_pct(int(counts[0]), int(counts[2]))}, top-3 {_pct(int(counts[1]), int(counts[2]))}, "
        f"no confident match when none answers {_pct(int(counts[3]), int(counts[4]))}"
    )
    print(
        f"  5-fold cross-validated: top-1 {held[0] / held[2]:.3f}, top-3 {held[1] / held[2]:.3f}, "
        f"no match {held[3] / held[4]:.3f}"
    )
    for weight, floor in (best, (KEYWORD_WEIGHT, CONFIDENT_SCORE)):
        counts = _kb_counts(cosine, keywords, gold, rows, (weight, floor))
        print(
            f"  weight {weight}, floor {floor}: top-1 {int(counts[0])}, top-3 {int(counts[1])} of "
            f"{int(counts[2])}; no match {int(counts[3])} of {int(counts[4])}"
        )


async def main(
    splits: list[str], url: str | None, calibrate: str | None, write: bool, sentiment_from: str | None = None
) -> None:
    async with _triton(url, sentiment_from) as triton_url:
        if calibrate == "sentiment":
            await calibrate_sentiment(triton_url, write)
            return
        if calibrate == "kb":
            await calibrate_kb(triton_url)
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
    parser.add_argument(
        "--split",
        choices=(*get_args(Split), "both", "all", "unheld"),
        default="both",
        help=(
            "both: dev and held-out; all: dev, held-out, probe, fresh, fresh2 and fresh3; unheld: all but "
            "held-out; heldout2 and heldout3 (the second and third held-out splits) only on their own"
        ),
    )
    parser.add_argument("--triton-url", default=None, help="use this running Triton instead of starting one")
    parser.add_argument("--calibrate-sentiment", action="store_true", help="fit the sentiment head on dev")
    parser.add_argument("--write", action="store_true", help="with --calibrate-sentiment: write head.npz")
    parser.add_argument("--calibrate-kb", action="store_true", help="fit kb-search's weight and floor on dev")
    parser.add_argument("--sentiment-from", metavar="REV", default=None,
                        help="serve the sentiment model as it was at git revision REV (everything else as shipped)")
    args = parser.parse_args()
    unheld = ["dev", "probe", "fresh", "fresh2", "fresh3"]
    groups = {"both": ["dev", "heldout"], "all": ["dev", "heldout", *unheld[1:]], "unheld": unheld}
    chosen = groups.get(args.split, [args.split])
    calibrate = "sentiment" if args.calibrate_sentiment else "kb" if args.calibrate_kb else None
    asyncio.run(main(chosen, args.triton_url, calibrate, args.write, args.sentiment_from))
