"""An incremental in-memory BM25 index over card text (name, purpose, description, skills).

Why not PostgreSQL full-text search: ``ts_rank_cd`` has no IDF and took ~94 ms at 100k cards (RECIPES.md);
why not a static BM25 library: cards change one at a time and every replica must apply changes in
milliseconds. Postings live in dicts (cheap to change) and are materialised lazily into numpy arrays of
precomputed term-frequency weights, so a query costs one vectorised add per query term.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["TextIndex", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have i in is it its me my of on or our that the their this to "
    "was we what when where which who will with you your can do does how please want need".split()
)


def _normalise(word: str) -> str:
    # A light plural fold ("orders" -> "order"); the same on documents and queries, so it only has to agree.
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stop words; ``snake_case`` and ``kebab-case`` split into words."""
    return [_normalise(w) for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in _STOPWORDS]


class TextIndex:
    """BM25 (k1, b) over documents keyed by small integer slots."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self._k1 = k1
        self._b = b
        self._postings: dict[str, dict[int, int]] = {}
        self._arrays: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = {}
        self._doc_terms: dict[int, tuple[str, ...]] = {}
        self._doc_len: dict[int, int] = {}
        self._total_len = 0

    def __len__(self) -> int:
        return len(self._doc_len)

    def set(self, slot: int, tokens: Iterable[str]) -> None:
        """Index (or re-index) document ``slot`` with ``tokens``."""
        self.remove(slot)
        counts = Counter(tokens)
        length = sum(counts.values())
        self._doc_len[slot] = length
        self._total_len += length
        self._doc_terms[slot] = tuple(counts)
        for term, tf in counts.items():
            self._postings.setdefault(term, {})[slot] = tf
            self._arrays.pop(term, None)

    def remove(self, slot: int) -> None:
        """Forget document ``slot`` (no-op when absent)."""
        terms = self._doc_terms.pop(slot, None)
        if terms is None:
            return
        self._total_len -= self._doc_len.pop(slot)
        for term in terms:
            postings = self._postings[term]
            del postings[slot]
            if not postings:
                del self._postings[term]
            self._arrays.pop(term, None)

    def contains(self, slot: int, term: str) -> bool:
        """Whether document ``slot`` has ``term``."""
        postings = self._postings.get(term)
        return postings is not None and slot in postings

    def _array(self, term: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]] | None:
        cached = self._arrays.get(term)
        if cached is not None:
            return cached
        postings = self._postings.get(term)
        if not postings:
            return None
        slots = np.fromiter(postings.keys(), dtype=np.int32, count=len(postings))
        tf = np.fromiter(postings.values(), dtype=np.float32, count=len(postings))
        lengths = np.fromiter((self._doc_len[s] for s in postings), dtype=np.float32, count=len(postings))
        average = self._total_len / max(1, len(self._doc_len))
        weight = (
            tf * (self._k1 + 1) / (tf + self._k1 * (1 - self._b + self._b * lengths / max(average, 1e-9)))
        )
        cached = (slots, weight.astype(np.float32))
        self._arrays[term] = cached
        return cached

    def scores(self, terms: Iterable[str], size: int) -> npt.NDArray[np.float32] | None:
        """BM25 score per slot (dense, length ``size``) for the query ``terms``; ``None`` when nothing matches."""
        total = max(1, len(self._doc_len))
        result: npt.NDArray[np.float32] | None = None
        for term in dict.fromkeys(terms):
            array = self._array(term)
            if array is None:
                continue
            slots, weight = array
            df = len(slots)
            idf = math.log(1.0 + (total - df + 0.5) / (df + 0.5))
            if result is None:
                result = np.zeros(size, dtype=np.float32)
            result[slots] += weight * np.float32(idf)  # slots are unique within one term
        return result
