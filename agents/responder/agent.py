"""responder: drafts a reply from the retrieved articles and the customer's context.

With a generative model on Triton (any model the catalog lists for task ``generation`` that the server
has ready) it prompts it; otherwise, as on the local CPU Triton, it writes an extractive reply: the
articles' sentences closest to the ticket (MiniLM through Triton), each group cited by article id.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from agentmesh._errors import FailedPreconditionError
from agentmesh.agent import AgentInfo, ModelUsage, SkillContext, skill
from agentmesh.agents._support import Article, Ticket, TritonAgent, find_injection, first_name, redact_pii
from agentmesh.agents.kb_search._kb import CONFIDENT_SCORE
from agentmesh.agents.responder._compose import (
    SIGNATURE,
    Candidate,
    ReplyPlan,
    candidate_sentences,
    compose_escalation,
    compose_reply,
    customer_context,
    plan_from_feedback,
    quotable_articles,
    select_sentences,
    varied_plans,
)

__all__ = ["DraftInput", "DraftOutput", "ResponderAgent"]


_GENERATION_TASK = "generation"


class DraftInput(BaseModel):
    """The ticket, its triaged intent, the retrieved articles, the customer and earlier review feedback."""

    ticket: Ticket
    intent: str = Field(default="other", max_length=40)
    articles: list[Article] = Field(default_factory=list, max_length=20)
    customer: dict[str, Any] | None = Field(
        default=None, description="crm's customer record (only the name is used)."
    )
    feedback: list[str] = Field(
        default_factory=list, description="quality_check reasons from a rejected draft."
    )
    previous_reply: str = Field(
        default="",
        max_length=20_000,
        description="The rejected draft itself: a regenerated draft never repeats it word for word.",
    )


class DraftOutput(BaseModel):
    """The draft reply; ``escalate`` when no article answers the ticket and a person must take over."""

    reply: str
    citations: list[str] = Field(description="Ids of the articles the reply cites.")
    model: str = Field(
        description="What wrote it: a generative model, or 'extractive/<embedding model>:<version>'."
    )
    escalate: bool = Field(
        default=False, description="True: a holding reply only; hand the ticket to a person (see reason)."
    )
    escalation_reason: str = Field(default="", description="Why a person must answer, when escalate.")


class ResponderAgent(TritonAgent):
    """Drafts customer replies grounded in knowledge-base articles."""

    card = AgentInfo(
        name="responder",
        namespace="support",
        version="1.0.0",
        purpose="reply-drafting",
        description=(
            "Drafts a polite reply to a support ticket from the retrieved knowledge-base articles, citing them, "
            "greeting the customer by first name; regenerates from quality-check feedback; with no article "
            "to answer from, writes a holding reply and asks for escalation to a person."
        ),
        policies=("pii:none",),
        labels={"domain": "customer-service", "model": "generation-or-extractive"},
        owner="support-platform",
    )

    @skill(
        description="Draft a cited reply to a ticket from retrieved articles; honours quality-check feedback."
    )
    async def draft_reply(self, request: DraftInput, ctx: SkillContext) -> DraftOutput:
        """Generative when a generation model is served, extractive otherwise."""
        name = first_name(str((request.customer or {}).get("name", "")))
        injected = find_injection(request.ticket.as_text())
        if not request.articles or injected:
            return DraftOutput(
                reply=compose_escalation(first_name=name, intent=request.intent),
                citations=[],
                model="template",
                escalate=True,
                escalation_reason=(
                    f"the ticket addresses an assistant's instructions ({injected!r}); a person must read it"
                    if injected
                    else "no knowledge-base article answers this ticket confidently"
                ),
            )
        generator = await self._generator()
        if generator is not None and request.articles:
            return await self._generate(generator, request, name, ctx)
        return await self._extract(request, name, ctx)

    async def _generator(self) -> str | None:
        try:
            return (await self.inference.select(_GENERATION_TASK)).name
        except FailedPreconditionError:
            return None

    async def _extract(self, request: DraftInput, name: str, ctx: SkillContext) -> DraftOutput:
        # Praise and general questions get a short answer from the best article, not a policy digest; the
        # feedback then changes the plan on every path.
        base = ReplyPlan(sentences=1) if request.intent == "other" else ReplyPlan()
        plan = plan_from_feedback(request.feedback, base)
        draft = await self._extract_with(plan, request, name, ctx)
        rejected = " ".join(request.previous_reply.split())
        # The same reasons twice make the same plan: vary it until the draft differs from the rejected one.
        for vary in varied_plans(plan) if rejected else ():
            if " ".join(draft.reply.split()) != rejected:
                break
            draft = await self._extract_with(vary, request, name, ctx)
        return draft

    async def _extract_with(
        self, plan: ReplyPlan, request: DraftInput, name: str, ctx: SkillContext
    ) -> DraftOutput:
        articles = quotable_articles(request.articles, plan, CONFIDENT_SCORE)
        candidates = candidate_sentences(articles)
        quoted: list[Candidate] = []
        model = "extractive"
        await ctx.progress(f"ranking {len(candidates)} article sentences against the ticket", 0.2)
        if candidates:
            embedded = await self.embed_reusing([request.ticket.as_text()], [c.text for c in candidates], ctx)
            vectors = embedded.embeddings[1:]
            quoted = [
                candidates[i]
                for i in select_sentences(vectors @ embedded.embeddings[0], vectors, candidates, plan)
            ]
            model = f"extractive/{embedded.model}:{embedded.version}"
        await ctx.progress(f"composing the reply from {len(quoted)} sentences", 0.8)
        reply, citations = compose_reply(
            first_name=name,
            intent=request.intent,
            subject=request.ticket.subject,
            quoted=quoted,
            titles={a.article_id: a.title for a in articles},
            plan=plan,
            context=customer_context(request.customer, request.ticket.as_text(), request.intent),
        )
        return DraftOutput(reply=reply, citations=citations, model=model)

    async def _generate(self, model: str, request: DraftInput, name: str, ctx: SkillContext) -> DraftOutput:
        # Contract of a generation model here: input PROMPT (BYTES [1]), output TEXT (BYTES [1]).
        prompt = build_prompt(request, name)
        started = time.perf_counter()
        result = await self.inference.infer(
            model,
            {"PROMPT": np.array([[prompt.encode("utf-8")]], dtype=object)},
            outputs=["TEXT"],
            deadline=ctx.time_remaining(),
        )
        ctx.record_model_usage(ModelUsage(result.model, result.version, time.perf_counter() - started))
        raw = result.outputs["TEXT"].reshape(-1)[0]
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        reply, citations = finish_generated(text, request.articles)
        return DraftOutput(reply=reply, citations=citations, model=f"{result.model}:{result.version}")


def build_prompt(request: DraftInput, name: str) -> str:
    """The instruction for a generative model: answer only from the articles, cite ids, no personal data."""
    sources = "\n".join(
        f"[{a.article_id}] {a.title}: {' '.join((a.body or a.snippet).split())}" for a in request.articles
    )
    feedback = "\n".join(f"- {f}" for f in request.feedback)
    return (
        "You are a polite customer-support agent. Answer the ticket using ONLY the sources below and cite the "
        "id of every source you use in square brackets, e.g. [kb-refund-policy]. Greet the customer as "
        f"{name or 'the customer'} (first name only); never include email addresses, phone numbers or card numbers.\n"
        f"Intent: {request.intent}\nSubject: {redact_pii(request.ticket.subject)}\n"
        f"Ticket: {redact_pii(request.ticket.text)}\nSources:\n{sources}\n"
        + (
            f"A reviewer rejected the previous draft for these reasons; fix them:\n{feedback}\n"
            if feedback
            else ""
        )
        + "Reply:"
    )


def finish_generated(text: str, articles: list[Article]) -> tuple[str, list[str]]:
    """A generated reply made safe: PII redacted, citations read from ``[id]`` marks of known articles
    (the best article is appended as a source when the model cited none), the signature ensured.
    """
    known = [a.article_id for a in articles]
    cited = [i for i in dict.fromkeys(re.findall(r"\[([A-Za-z0-9_.-]+)\]", text)) if i in known]
    reply = redact_pii(text.strip())
    if not cited and known:
        reply += f'\n\n(see "{articles[0].title}" [{known[0]}])'
        cited = [known[0]]
    if SIGNATURE.splitlines()[-1] not in reply:
        reply += f"\n\n{SIGNATURE}"
    return reply, cited
