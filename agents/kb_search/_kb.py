"""The knowledge base: shipped articles, the passages that get embedded, and ranking by cosine (no gRPC)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

from agentmesh.agents._support._keywords import PhraseMatcher

__all__ = [
    "ARTICLES_FILE",
    "CONFIDENT_SCORE",
    "KEYWORD_WEIGHT",
    "PASSAGE_WORDS",
    "SUPPORT_WEIGHT",
    "KbArticle",
    "Passage",
    "best_passage_score",
    "keyword_bonus",
    "load_articles",
    "passages_of",
    "rank_articles",
    "shared_keywords",
]

ARTICLES_FILE = Path(__file__).with_name("articles.yaml")
# Added to an article's score per keyword phrase of it found in the query (at most two count): an exact
# term such as "doppelt abgebucht" or "csv" is strong evidence the English embedding model may miss.
# Calibrated on the dev split of the evaluation set only (bench_support_quality.py --calibrate-kb).
KEYWORD_WEIGHT = 0.4
# Below this best score there is no confident match: kb-search returns no article and the responder
# escalates to a person instead of citing something unrelated. Calibrated with KEYWORD_WEIGHT on dev only.
CONFIDENT_SCORE = 0.42
# Words per embedded passage at most: MiniLM reads 128 tokens (~0.75 words per token in English, fewer in
# Spanish, German and French).
PASSAGE_WORDS = 80
# Ranking only: an article's best passage is averaged with its next best body paragraph at this weight. An
# article that answers a ticket usually matches it in more than one paragraph; one that only shares a word
# with it matches in one passage (its title or a keyword list). The confidence floor still reads the best
# passage's score (best_passage_score). Chosen on the development splits.
SUPPORT_WEIGHT = 0.5


@dataclass(frozen=True)
class KbArticle:
    """One support article."""

    article_id: str
    title: str
    body: str
    keywords: tuple[str, ...] = ()

    @property
    def paragraphs(self) -> list[str]:
        """The body's paragraphs, whitespace normalised."""
        return [" ".join(p.split()) for p in self.body.split("\n\n") if p.strip()]


@dataclass(frozen=True)
class Passage:
    """What gets embedded: an article's title, or one paragraph prefixed with the title for context."""

    article: int  # index into the article list
    text: str  # embedded text
    snippet: str  # shown to the caller
    paragraph: bool = False  # one paragraph of the body (not the title or a keyword list)


def load_articles(path: Path = ARTICLES_FILE) -> list[KbArticle]:
    """Articles from a YAML list of ``{id, title, body}``; ids must be unique."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    articles = [
        KbArticle(
            str(a["id"]),
            str(a["title"]).strip(),
            str(a["body"]).strip(),
            tuple(k.strip() for k in str(a.get("keywords", "")).split(",") if k.strip()),
        )
        for a in raw
    ]
    ids = [a.article_id for a in articles]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate article ids in {path}")
    return articles


def passages_of(articles: list[KbArticle]) -> list[Passage]:
    """Title passages (with the keywords: the words customers use), plus one passage per paragraph
    (short enough for MiniLM's 128-token window).
    """
    passages: list[Passage] = []
    for index, article in enumerate(articles):
        paragraphs = article.paragraphs
        lead = paragraphs[0] if paragraphs else article.title
        passages.append(Passage(index, article.title, lead))
        passages.extend(
            Passage(index, f"{article.title}. {', '.join(group)}", lead)
            for group in _keyword_groups(article.title, article.keywords)
        )
        passages.extend(Passage(index, f"{article.title}. {p}", p, paragraph=True) for p in paragraphs)
    return passages


def _keyword_groups(title: str, keywords: tuple[str, ...]) -> list[list[str]]:
    """The keywords in order, in as few groups as keep each "title. keywords" passage within
    :data:`PASSAGE_WORDS` (a long list would be cut off by the embedding model's window).
    """
    groups: list[list[str]] = []
    words = len(title.split())
    for keyword in keywords:
        size = len(keyword.split())
        if not groups or words + size > PASSAGE_WORDS:
            groups.append([])
            words = len(title.split())
        groups[-1].append(keyword)
        words += size
    return groups


def shared_keywords(matchers: list[PhraseMatcher]) -> dict[str, frozenset[int]]:
    """Keyword phrases that are evidence for other articles too: a phrase of one article that is a whole
    part of at least two longer keyword phrases of another (``refund`` of kb-refund-policy is a part of
    kb-refund-status's "refund status", "where is my refund", "still no refund"...) names that article's
    topic as well, so it counts for both and the embedding decides between them.
    """
    shared: dict[str, set[int]] = {}
    for owner, matcher in enumerate(matchers):
        for phrase in matcher.phrases:
            part = re.compile(r"(?<!\w)" + re.escape(phrase).replace(r"\*", r"\w*") + r"(?!\w)")
            for other, candidate in enumerate(matchers):
                if other != owner and phrase not in candidate.phrases:
                    if sum(p != phrase and part.search(p) is not None for p in candidate.phrases) >= 2:
                        shared.setdefault(phrase, set()).add(other)
    return {phrase: frozenset(articles) for phrase, articles in shared.items()}


def keyword_bonus(
    query: str, matchers: list[PhraseMatcher], shared: dict[str, frozenset[int]] | None = None
) -> npt.NDArray[np.float32]:
    """Per article: :data:`KEYWORD_WEIGHT` for each of its keyword phrases in ``query`` (at most two),
    counting the phrases of other articles that ``shared`` (:func:`shared_keywords`) gives it too.
    """
    found = [set(m.find(query)) for m in matchers]
    if shared:
        for phrase in set().union(*found) & set(shared):
            for article in shared[phrase]:
                found[article].add(phrase)
    return np.array([KEYWORD_WEIGHT * min(2, len(f)) for f in found], dtype=np.float32)


def rank_articles(
    query: npt.NDArray[np.float32],
    passage_vectors: npt.NDArray[np.float32],
    passages: list[Passage],
    top_k: int,
    bonus: npt.NDArray[np.float32] | None = None,
    support: float = SUPPORT_WEIGHT,
) -> list[tuple[int, float, Passage]]:
    """Articles ranked by their best passage's cosine similarity to ``query`` (unit vectors), averaged with
    their next best body paragraph's at weight ``support``, plus the article's ``bonus`` (keyword evidence):
    ``(article index, score, best passage)``, best first, at most ``top_k``.
    """
    similarities = passage_vectors @ query
    best: dict[int, tuple[float, int]] = {}
    for position, (passage, score) in enumerate(zip(passages, similarities.tolist(), strict=True)):
        current = best.get(passage.article)
        if current is None or score > current[0]:
            best[passage.article] = (score, position)
    seconds: dict[int, float] = {}
    for position, (passage, score) in enumerate(zip(passages, similarities.tolist(), strict=True)):
        if passage.paragraph and position != best[passage.article][1]:
            seconds[passage.article] = max(score, seconds.get(passage.article, score))
    scores = {
        index: (score + support * seconds.get(index, score)) / (1 + support)
        + (float(bonus[index]) if bonus is not None else 0.0)
        for index, (score, _) in best.items()
    }
    ranked = sorted(scores, key=lambda index: (-scores[index], index))
    return [(index, scores[index], passages[best[index][1]]) for index in ranked[: max(0, top_k)]]


def best_passage_score(
    query: npt.NDArray[np.float32],
    passage_vectors: npt.NDArray[np.float32],
    passages: list[Passage],
    article: int,
    bonus: npt.NDArray[np.float32] | None = None,
) -> float:
    """One article's best passage's cosine similarity to ``query`` plus its ``bonus``: what the confidence
    floor :data:`CONFIDENT_SCORE` reads (the ranking's average with a second paragraph would be stricter on
    short articles and on tickets that name one thing).
    """
    rows = [position for position, passage in enumerate(passages) if passage.article == article]
    score = float((passage_vectors[rows] @ query).max())
    return score + (float(bonus[article]) if bonus is not None else 0.0)
