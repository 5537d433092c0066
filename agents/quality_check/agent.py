"""quality-check: reviews a draft reply for relevance, citations, personal data and tone."""

from __future__ import annotations

from pydantic import BaseModel, Field

from agentmesh.agent import AgentInfo, SkillContext, skill
from agentmesh.agents._support import Article, Ticket, TritonAgent
from agentmesh.agents.quality_check._checks import (
    citation_problems,
    cited_paragraphs,
    length_problems,
    pii_problems,
    politeness_problems,
    relevance_problems,
    verdict,
)

__all__ = ["CheckInput", "CheckOutput", "QualityCheckAgent"]


class CheckInput(BaseModel):
    """A draft reply, the ticket it answers and the articles that were retrieved for it."""

    ticket: Ticket
    reply: str = Field(max_length=20_000)
    citations: list[str] = Field(default_factory=list)
    articles: list[Article] = Field(default_factory=list, max_length=20)


class CheckOutput(BaseModel):
    """The review: a failing draft carries reasons the responder can act on."""

    passed: bool
    score: float = Field(ge=0.0, le=1.0)
    reasons: list[str]
    relevance: float = Field(description="Cosine similarity of the reply and the ticket.")


class QualityCheckAgent(TritonAgent):
    """Scores drafts before they reach a customer."""

    card = AgentInfo(
        name="quality-check",
        namespace="support",
        version="1.0.0",
        purpose="reply-review",
        description=(
            "Reviews a draft support reply: relevant to the ticket, cites a retrieved article, leaks no personal "
            "data (emails, phone or card numbers), polite; returns actionable reasons when it fails."
        ),
        policies=("pii:none",),
        labels={"domain": "customer-service", "model": "embedding"},
        owner="support-platform",
    )

    @skill(
        description="Check a draft reply (relevance, citations, no PII, politeness); reasons when it fails."
    )
    async def check_reply(self, request: CheckInput, ctx: SkillContext) -> CheckOutput:
        """Rules first, then the reply-to-ticket similarity through Triton."""
        reply = request.reply.strip()
        problems = [
            *pii_problems(reply),
            *citation_problems(reply, request.citations, [a.article_id for a in request.articles]),
            *politeness_problems(reply),
            *length_problems(reply),
        ]
        similarity, paragraph_similarities = 0.0, []
        if reply:
            paragraphs = cited_paragraphs(reply, request.citations)
            embedded = await self.embed([request.ticket.as_text(), reply, *paragraphs], ctx)
            similarities = embedded.embeddings[1:] @ embedded.embeddings[0]
            similarity, paragraph_similarities = float(similarities[0]), [float(s) for s in similarities[1:]]
        problems = relevance_problems(similarity, paragraph_similarities) + problems
        result = verdict(similarity, problems)
        return CheckOutput(
            passed=result.passed, score=result.score, reasons=result.reasons, relevance=round(similarity, 4)
        )
