"""kb-search: semantic retrieval over the support knowledge base, embedded through Triton."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from agentmesh.agent import AgentInfo, SkillContext, skill
from agentmesh.agents._support import Article, TritonAgent
from agentmesh.agents._support._gloss import for_embedding, for_matching
from agentmesh.agents._support._keywords import PhraseMatcher
from agentmesh.agents.kb_search._kb import (
    CONFIDENT_SCORE,
    KbArticle,
    Passage,
    best_passage_score,
    keyword_bonus,
    load_articles,
    passages_of,
    rank_articles,
    shared_keywords,
)

__all__ = ["KbSearchAgent", "SearchInput", "SearchOutput"]


class SearchInput(BaseModel):
    """A free-text question or ticket."""

    query: str = Field(
        min_length=1, max_length=20_000, description="What to search for, e.g. the ticket text."
    )
    top_k: int = Field(default=3, ge=1, le=20, description="How many articles to return.")


class SearchOutput(BaseModel):
    """The best matching articles, best first; none when nothing matches confidently."""

    articles: list[Article] = Field(description="Empty when there is no confident match.")
    confident: bool = Field(
        default=True,
        description="False: no article answers the query confidently (escalate to a person, cite nothing).",
    )
    best_score: float = Field(
        default=0.0,
        description="The best article's best passage's score, returned or not (what the confidence floor reads).",
    )


class KbSearchAgent(TritonAgent):
    """Embeds every article passage once (through Triton, cached in memory) and ranks them by cosine."""

    card = AgentInfo(
        name="kb-search",
        namespace="support",
        version="1.0.0",
        purpose="knowledge-retrieval",
        description=(
            "Finds the customer-support knowledge-base articles that answer a ticket (billing disputes, double "
            "charges, refunds, invoices; plans, seats, team members, data export and import; account security, "
            "2FA, privacy and data deletion; shipping, returns, damaged items; outages, integrations, API keys), "
            "by semantic similarity and multilingual keywords; says when nothing matches confidently."
        ),
        policies=("pii:none", "data:public"),
        labels={"domain": "customer-service", "model": "embedding"},
        owner="support-platform",
    )

    articles: list[KbArticle]
    passages: list[Passage]
    _matchers: list[PhraseMatcher]
    _shared: dict[str, frozenset[int]]
    _passage_vectors: npt.NDArray[np.float32]

    async def prepare(self, ctx: SkillContext | None) -> None:
        """Load the shipped articles and embed their passages."""
        articles = load_articles()
        passages = passages_of(articles)
        embedded = await self.embed_in_batches([p.text for p in passages], ctx)
        self._matchers = [PhraseMatcher(a.keywords) for a in articles]
        self._shared = shared_keywords(self._matchers)
        self.articles, self.passages, self._passage_vectors = articles, passages, embedded

    @skill(
        description=(
            "Search the support knowledge base; returns the top_k articles with scores, or none (confident "
            "false) when nothing answers the query."
        )
    )
    async def search_articles(self, request: SearchInput, ctx: SkillContext) -> SearchOutput:
        """Rank articles by their best passage's similarity to the query plus keyword evidence."""
        await self.ensure_prepared(ctx)
        query = (await self.embed([for_embedding(request.query)], ctx)).embeddings[0]
        bonus = keyword_bonus(for_matching(request.query), self._matchers, self._shared)
        ranked = rank_articles(query, self._passage_vectors, self.passages, request.top_k, bonus)
        best = (
            best_passage_score(query, self._passage_vectors, self.passages, ranked[0][0], bonus)
            if ranked
            else 0.0
        )
        if best < CONFIDENT_SCORE:
            return SearchOutput(articles=[], confident=False, best_score=round(best, 4))
        return SearchOutput(
            best_score=round(best, 4),
            articles=[
                Article(
                    article_id=self.articles[index].article_id,
                    title=self.articles[index].title,
                    score=round(score, 4),
                    snippet=passage.snippet,
                    body=self.articles[index].body,
                )
                for index, score, passage in ranked
            ],
        )
