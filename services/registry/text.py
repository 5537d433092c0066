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
from collections import Counter, OrderedDict
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
# Terms in fewer documents are cheap to materialise on first use (names, ids), so prepare() skips them.
PREPARED_MIN = 8
# Dense terms whose idf-scaled weights are kept between queries (one float per slot each: ~0.4 MB per term at
# 100k slots; the synthetic 100k-card index has 309 dense terms, ~124 MB if all are kept). Each one not kept costs
# a query a multiply pass over every slot (~30 µs of a free-text query's ~600 at 128 kept, measured 2026-12-03).
# At least 2: scores() holds the newest product back while it fetches the next (which evicts the oldest).
SCALED_TERMS = 384


class TextIndex:
    """BM25 (k1, b) over documents keyed by small integer slots."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self._k1 = k1
        self._b = b
        self._postings: dict[str, dict[int, int]] = {}
        self._arrays: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = {}
        self._dense: dict[str, npt.NDArray[np.float32]] = {}
        # idf times the dense weights of the common terms of recent queries (see _scaled_array).
        # term -> (idf, slots computed, buffer): most recent last.
        self._scaled: OrderedDict[str, tuple[np.float32, int, npt.NDArray[np.float32]]] = OrderedDict()
        self._result: npt.NDArray[np.float32] | None = None
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
            if self._scaled:
                self._stale(term)
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
                self._stale(term)

    def contains(self, slot: int, term: str) -> bool:
        """Whether document ``slot`` has ``term``."""
        postings = self._postings.get(term)
        return postings is not None and slot in postings

    def matched(self, slot: int, terms: Iterable[str]) -> list[str]:
        """The distinct ``terms`` document ``slot`` has, in query order."""
        postings_of = self._postings
        return [t for t in dict.fromkeys(terms) if slot in postings_of.get(t, ())]

    def matched_each(self, slots: list[int], terms: Iterable[str]) -> list[list[str]]:
        """``matched`` for each of ``slots``: per slot, the distinct ``terms`` its document has, in query order.

        A common term's dense weights say it at once for every slot (a weight is positive exactly when the
        document has the term), so its big postings dict is not probed once per slot.
        """
        out: list[list[str]] = [[] for _ in slots]
        if not slots:
            return out
        top = max(slots)
        at: npt.NDArray[np.intp] | None = None
        for term in dict.fromkeys(terms):
            dense = self._dense.get(term)
            if dense is not None and top < len(dense):
                if at is None:
                    at = np.array(slots, dtype=np.intp)
                flags = (dense[at] > 0).tolist()
            else:
                postings = self._postings.get(term)
                if not postings:
                    continue
                flags = [slot in postings for slot in slots]
            for hits, flag in zip(out, flags, strict=True):
                if flag:
                    hits.append(term)
        return out

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
        """Build the arrays of every term in a few documents or more now (after a bulk load), not on first query."""
        dense_from = self._dense_threshold()
        for term, postings in self._postings.items():
            if len(postings) >= dense_from:
                self._dense_array(term, size)
            elif len(postings) >= PREPARED_MIN:
                self._array(term)

    def _stale(self, term: str) -> None:
        """The weights of ``term`` changed: its kept product must be recomputed (into the same buffer)."""
        kept = self._scaled.get(term)
        if kept is not None:
            self._scaled[term] = (kept[0], -1, kept[2])

    def _scaled_array(self, term: str, idf: np.float32, size: int) -> npt.NDArray[np.float32]:
        """``idf`` times the dense weights of ``term`` (``size`` slots), kept for the next query while ``idf`` holds.

        Adding a kept product is one pass over the slots instead of a multiply and an add (~2x cheaper);
        the product is the same float32 multiply as computing it afresh, so scores do not change. An evicted
        product's buffer is reused: a fresh 400 KB array costs page faults worth more than the multiply.
        """
        kept = self._scaled.pop(term, None)
        if kept is not None and kept[0] == idf and kept[1] == size:
            self._scaled[term] = kept  # now the most recent
            return kept[2][:size]
        buffer = kept[2] if kept is not None else None
        if buffer is None and len(self._scaled) >= SCALED_TERMS:
            buffer = self._scaled.popitem(last=False)[1][2]
        if buffer is None or len(buffer) < size:
            buffer = np.empty(-(-size // 4096) * 4096, dtype=np.float32)  # room for a few more slots
        np.multiply(self._dense_array(term, size)[:size], idf, out=buffer[:size])
        self._scaled[term] = (idf, size, buffer)
        return buffer[:size]

    def _buffer(self, size: int) -> npt.NDArray[np.float32]:
        # Reused between queries: a fresh 400 KB array per query costs page faults that dominate the arithmetic.
        if self._result is None or len(self._result) < size:
            self._result = np.zeros(max(1024, 2 * size), dtype=np.float32)
        return self._result[:size]

    def scores(self, terms: Iterable[str], size: int) -> npt.NDArray[np.float32] | None:
        """BM25 score per slot (dense, length ``size``) for the query ``terms``; ``None`` when nothing matches.

        The array is a buffer this index reuses: it is valid until the next call.
        """
        total = max(1, len(self._doc_len))
        dense_from = self._dense_threshold()
        result = self._buffer(size)
        empty = True
        first: npt.NDArray[np.float32] | None = None  # the first dense term's products, not yet added
        for term in dict.fromkeys(terms):
            postings = self._postings.get(term)
            if not postings:
                continue
            df = len(postings)
            idf = np.float32(math.log(1.0 + (total - df + 0.5) / (df + 0.5)))
            if df >= dense_from or term in self._dense:
                scaled = self._scaled_array(term, idf, size)[:size]
                if empty:
                    if first is None:  # held back: the next dense term adds it in the same pass
                        first = scaled
                        continue
                    # 0 + x + y == x + y: one pass writes the sum, without copying or clearing the buffer first
                    np.add(first, scaled, out=result)
                    first = None
                    empty = False
                else:
                    result += scaled
                continue
            if empty:
                if first is None:
                    result.fill(0.0)
                else:  # 0 + x == x
                    np.copyto(result, first)
                    first = None
                empty = False
            slots, weight = self._array(term)
            result[slots] += weight * idf  # slots are unique within one term
        if first is not None:  # a single dense term (and nothing else)
            np.copyto(result, first)
            empty = False
        return None if empty else result
