"""An incremental in-memory BM25 index over card text (name, purpose, description, skills).

Why not PostgreSQL full-text search: ``ts_rank_cd`` has no IDF and took ~94 ms at 100k cards (RECIPES.md);
why not a static BM25 library: cards change one at a time and every replica must apply changes in
milliseconds. Postings live in dicts (cheap to change) and are materialised lazily into numpy arrays of
precomputed term-frequency weights, so a query costs one vectorised add per query term. Terms found in
more than ``1/DENSE_FRACTION`` of the documents keep a dense weight array instead (one float per slot,
updated in place), because adding a dense array is ~50x cheaper than scattering tens of thousands of
postings.
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


# word -> its index form, or "" for a dropped word; names and descriptions repeat words a lot.
_FORMS: dict[str, str] = {}
_MAX_FORMS = 200_000


def _form(word: str) -> str:
    form = _FORMS.get(word)
    if form is None:
        if len(word) < 2 or word in _STOPWORDS:
            form = ""
        elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            form = word[:-1]  # a light plural fold ("orders" -> "order"), the same on documents and queries
        else:
            form = word
        if len(_FORMS) < _MAX_FORMS:
            _FORMS[word] = form
    return form


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stop words; ``snake_case`` and ``kebab-case`` split into words."""
    known = _FORMS.get
    out = []
    for word in _WORD.findall(text.lower()):
        form = known(word)
        if form is None:
            form = _form(word)
        if form:
            out.append(form)
    return out


# A term in more than 1/DENSE_FRACTION of the documents (and at least DENSE_MIN) gets a dense weight array.
DENSE_FRACTION = 50
DENSE_MIN = 512


class TextIndex:
    """BM25 (k1, b) over documents keyed by small integer slots."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self._k1 = k1
        self._b = b
        self._postings: dict[str, dict[int, int]] = {}
        self._arrays: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = {}
        self._dense: dict[str, npt.NDArray[np.float32]] = {}
        self._buffers: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        self._doc_terms: dict[int, tuple[str, ...]] = {}
        self._doc_len: dict[int, int] = {}
        self._total_len = 0

    def __len__(self) -> int:
        return len(self._doc_len)

    def _weight(self, tf: float, length: float) -> float:
        average = self._total_len / max(1, len(self._doc_len))
        return tf * (self._k1 + 1) / (tf + self._k1 * (1 - self._b + self._b * length / max(average, 1e-9)))

    def _dense_threshold(self) -> int:
        return max(DENSE_MIN, len(self._doc_len) // DENSE_FRACTION)

    def set(self, slot: int, tokens: Iterable[str]) -> None:
        """Index (or re-index) document ``slot`` with ``tokens``."""
        self.remove(slot)
        counts = Counter(tokens)
        length = sum(counts.values())
        self._doc_len[slot] = length
        self._total_len += length
        self._doc_terms[slot] = tuple(counts)
        postings_of, arrays, dense_of = self._postings, self._arrays, self._dense
        for term, tf in counts.items():
            postings = postings_of.get(term)
            if postings is None:
                postings_of[term] = {slot: tf}
            else:
                postings[slot] = tf
            dense = dense_of.get(term) if dense_of else None
            if dense is None:
                if arrays:
                    arrays.pop(term, None)
                continue
            if slot >= len(dense):
                dense = self._dense[term] = np.concatenate(
                    [dense, np.zeros(max(slot + 1, 2 * len(dense)) - len(dense), dtype=np.float32)]
                )
            dense[slot] = self._weight(tf, length)

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
            dense = self._dense.get(term)
            if dense is not None:
                dense[slot] = 0.0

    def contains(self, slot: int, term: str) -> bool:
        """Whether document ``slot`` has ``term``."""
        postings = self._postings.get(term)
        return postings is not None and slot in postings

    def _array(self, term: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        cached = self._arrays.get(term)
        if cached is not None:
            return cached
        postings = self._postings[term]
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

    def _dense_array(self, term: str, size: int) -> npt.NDArray[np.float32]:
        dense = self._dense.get(term)
        if dense is None:
            slots, weight = self._array(term)
            dense = np.zeros(max(size, int(slots.max()) + 1), dtype=np.float32)
            dense[slots] = weight
            self._dense[term] = dense
            self._arrays.pop(term, None)
        elif len(dense) < size:
            dense = self._dense[term] = np.concatenate([dense, np.zeros(size - len(dense), dtype=np.float32)])
        return dense

    def prepare(self, size: int) -> None:
        """Build the dense arrays of every common term now (after a bulk load) rather than on first query."""
        dense_from = self._dense_threshold()
        for term, postings in self._postings.items():
            if len(postings) >= dense_from:
                self._dense_array(term, size)

    def _buffer(self, size: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        # Reused between queries: fresh 400 KB arrays per query cost page faults that dominate the arithmetic.
        if self._buffers is None or len(self._buffers[0]) < size:
            capacity = max(1024, 2 * size)
            self._buffers = (np.zeros(capacity, dtype=np.float32), np.zeros(capacity, dtype=np.float32))
        return self._buffers[0][:size], self._buffers[1][:size]

    def scores(self, terms: Iterable[str], size: int) -> npt.NDArray[np.float32] | None:
        """BM25 score per slot (dense, length ``size``) for the query ``terms``; ``None`` when nothing matches.

        The array is a buffer this index reuses: it is valid until the next call.
        """
        total = max(1, len(self._doc_len))
        dense_from = self._dense_threshold()
        result, scratch = self._buffer(size)
        empty = True
        for term in dict.fromkeys(terms):
            postings = self._postings.get(term)
            if not postings:
                continue
            df = len(postings)
            idf = np.float32(math.log(1.0 + (total - df + 0.5) / (df + 0.5)))
            if empty:
                result.fill(0.0)
                empty = False
            if df >= dense_from or term in self._dense:
                np.multiply(self._dense_array(term, size)[:size], idf, out=scratch)
                result += scratch
            else:
                slots, weight = self._array(term)
                result[slots] += weight * idf  # slots are unique within one term
        return None if empty else result
