"""kb-search agent: semantic retrieval over the shipped support knowledge base (``articles.yaml``)."""

from __future__ import annotations

from agentmesh.agents.kb_search._kb import KbArticle, load_articles, rank_articles
from agentmesh.agents.kb_search.agent import KbSearchAgent, SearchInput, SearchOutput

__all__ = ["KbArticle", "KbSearchAgent", "SearchInput", "SearchOutput", "load_articles", "rank_articles"]
