"""kb-search: semantic retrieval over the support knowledge base, embedded through Triton."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from agentmesh.agent import AgentInfo, SkillContext, skill
from agentmesh.agents._support import Article, TritonAgent
from agentmesh.agents.kb_search._kb import KbArticle, Passage, load_articles, passages_of, rank_articles

__all__ = ["KbSearchAgent", "SearchInput", "SearchOutput"]


class SearchInput(BaseModel):
    """A free-text question or ticket."""

    query: str = Field(
        min_length=1, max_length=20_000, description="What to search for, e.g. the ticket text."
    )
    top_k: int = Field(default=3, ge=1, le=20, description="How many articles to return.")


class SearchOutput(BaseModel):
    """The best matching articles, best first."""

    articles: list[Article]


class KbSearchAgent(TritonAgent):
    """Embeds every article passage once (through Triton, cached in memory) and ranks them by cosine."""

    card = AgentInfo(
        name="kb-search",
        namespace="support",
        version="1.0.0",
        purpose="knowledge-retrieval",
        description=(
            "Finds the customer-support knowledge-base articles (refunds, damaged items, shipping delays, "
            "passwords, subscriptions, invoices, warranty, returns) that answer a ticket, by semantic similarity."
        ),
        policies=("pii:none", "data:public"),
        labels={"domain": "customer-service", "model": "embedding"},
        owner="support-platform",
    )

    articles: list[KbArticle]
    passages: list[Passage]
    _vectors: np.ndarray

    async def prepare(self, ctx: SkillContext | None) -> None:
        """Load the shipped articles and embed their passages."""
        articles = load_articles()
        passages = passages_of(articles)
        embedded = await self.embed([p.text for p in passages], ctx)
        self.articles, self.passages, self._vectors = articles, passages, embedded.embeddings

    @skill(
        description="Semantic search of the support knowledge base; returns the top_k articles with scores."
    )
    async def search_articles(self, request: SearchInput, ctx: SkillContext) -> SearchOutput:
        """Rank articles by their best passage's similarity to the query."""
        await self.ensure_prepared(ctx)
        query = (await self.embed([request.query], ctx)).embeddings[0]
        ranked = rank_articles(query, self._vectors, self.passages, request.top_k)
        return SearchOutput(
            articles=[
                Article(
                    article_id=self.articles[index].article_id,
                    title=self.articles[index].title,
                    score=round(score, 4),
                    snippet=passage.snippet,
                    body=self.articles[index].body,
                )
                for index, score, passage in ranked
            ]
        )
