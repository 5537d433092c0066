"""An incremental in-memory BM25 index over card text (name, purpose, description, skills).

Why not PostgreSQL full-text search: ``ts_rank_cd`` has no IDF and took ~94 ms at 100k cards (RECIPES.md);
why not a static BM25 library: cards change one at a time and every replica must apply changes in
milliseconds. Postings live in dicts (cheap to change) and are materialised lazily into numpy arrays of
precomputed term-frequency weights (ascending slots). Terms found in more than ``1/DENSE_FRACTION`` of the
documents keep a dense weight array instead (one float per slot, updated in place), because reading a dense
array is ~50x cheaper than scattering tens of thousands of postings. A query is scored by compiled kernels
(``_kernels``, numba) in one pass over the slots: every term's weights times its idf summed per slot in query
order, without a dense array per term or per query.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from types import ModuleType

import numpy as np
import numpy.typing as npt
import regex

__all__ = ["Bm25Plan", "TextIndex", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+")
# Scripts written without spaces between words: a run of them is indexed as overlapping character bigrams.
_UNSPACED = r"\p{scx=Han}\p{scx=Hira}\p{scx=Kana}\p{scx=Thai}\p{scx=Laoo}\p{scx=Khmr}\p{scx=Mymr}\p{scx=Tibt}"
# Unicode words (\w: letters, marks, digits; "_" splits snake_case), or a run of an unspaced script.
_UNICODE_TOKEN = regex.compile(rf"(?V1)([\w&&[{_UNSPACED}]]+)|([\w--[_{_UNSPACED}]]+)")
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
    """Lower-case word tokens without stop words; ``snake_case`` and ``kebab-case`` split into words.

    Words follow Unicode word rules (``español``, ``счёт``, ``हिन्दी`` are one token each, case-folded, NFKC);
    a run of a script written without spaces (Chinese, Japanese, Thai, ...) becomes its overlapping character
    bigrams (``請求書`` -> ``請求``, ``求書``), or the character itself when it stands alone. Cards and intents
    go through this same function, so both sides agree.
    """
    if not text.isascii():
        return _tokenize_unicode(text)
    known = _FORMS.get
    out = []
    for word in _WORD.findall(text.lower()):
        form = known(word)
        if form is None:
            form = _form(word)
        if form:
            out.append(form)
    return out


def _tokenize_unicode(text: str) -> list[str]:
    # Russian yo (U+0451) is written ye (U+0435) as often as not; NFKC folds full-width letters, composes accents.
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u0451", "\u0435")
    out = []
    for unspaced, word in _UNICODE_TOKEN.findall(text):
        if word:
            form = _FORMS.get(word)
            if form is None:
                form = _form(word)
            if form:
                out.append(form)
        elif len(unspaced) == 1:
            out.append(unspaced)
        else:
            out += [unspaced[i : i + 2] for i in range(len(unspaced) - 1)]
    return out


# A term in more than 1/DENSE_FRACTION of the documents (and at least DENSE_MIN) gets a dense weight array.
DENSE_FRACTION = 50
DENSE_MIN = 512
# Terms in fewer documents are cheap to materialise on first use (names, ids), so prepare() skips them.
PREPARED_MIN = 8

_KERNELS: ModuleType | None = None
_NO_SLOTS = np.zeros(0, dtype=np.int32)
_NO_WEIGHTS = np.zeros(0, dtype=np.float32)
_NO_SPARSE = np.zeros(1, dtype=np.int64)
_NO_SERVING = np.zeros(0, dtype=np.int32)


def kernels() -> ModuleType:
    """The compiled kernels, imported on first use (numba is a heavy import: not for the CLI's other paths)."""
    global _KERNELS
    if _KERNELS is None:
        from agentmesh.services.registry import _kernels

        _KERNELS = _kernels
    return _KERNELS


class Bm25Plan:
    """A query's terms as the kernels take them: in query order, each dense (an index into ``dense``) or
    sparse (``-1 - i``: the ``i``-th run of ``sp_slots`` / ``sp_weights``), with its idf (float32)."""

    __slots__ = ("dense", "idf", "kinds", "n_dense", "sp_slots", "sp_start", "sp_weights")

    def __init__(
        self,
        kinds: list[int],
        idf: list[float],
        dense: list[npt.NDArray[np.float32]],
        sparse: list[tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]],
    ) -> None:
        self.kinds = np.array(kinds, dtype=np.int64)
        self.idf = np.array(idf, dtype=np.float32)  # each rounded as np.float32(idf) rounds it
        self.n_dense = len(dense)
        self.dense = (*dense, *(_NO_WEIGHTS,) * (kernels().MAX_DENSE - len(dense)))
        self.sp_slots: npt.NDArray[np.int32]
        self.sp_weights: npt.NDArray[np.float32]
        if not sparse:
            self.sp_slots, self.sp_weights, self.sp_start = _NO_SLOTS, _NO_WEIGHTS, _NO_SPARSE
        elif len(sparse) == 1:
            self.sp_slots, self.sp_weights = sparse[0]
            self.sp_start = np.array([0, len(self.sp_slots)], dtype=np.int64)
        else:
            self.sp_slots = np.concatenate([slots for slots, _ in sparse])
            self.sp_weights = np.concatenate([weights for _, weights in sparse])
            self.sp_start = np.zeros(len(sparse) + 1, dtype=np.int64)
            np.cumsum([len(slots) for slots, _ in sparse], out=self.sp_start[1:])

    def top(
        self,
        size: int,
        boost: npt.NDArray[np.float32],
        serving: npt.NDArray[np.int32] | None,
        wanted: int,
    ) -> tuple[int, int, npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Slots ``0..size-1`` ranked by BM25 times ``boost``: (slots ranked above 0, their SERVING instances when
        ``serving`` is given else that count again, the best ``wanted`` slots, their ranked scores), best first,
        a tie by lower slot first."""
        slots = np.empty(wanted, dtype=np.int64)
        scores = np.empty(wanted, dtype=np.float32)
        positive, instances, held = kernels().top_ranked(
            size,
            self.kinds,
            self.idf,
            self.dense,
            self.n_dense,
            self.sp_slots,
            self.sp_weights,
            self.sp_start,
            boost,
            _NO_SERVING if serving is None else serving,
            serving is not None,
            wanted,
            slots,
            scores,
        )
        return positive, instances, slots[:held], scores[:held]

    def ranked_at(
        self, slots: npt.NDArray[np.int64], boost: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """BM25 times ``boost`` of each of ``slots``."""
        return kernels().ranked_at(  # type: ignore[no-any-return]
            slots, self.kinds, self.idf, self.dense, self.sp_slots, self.sp_weights, self.sp_start, boost
        )


class TextIndex:
    """BM25 (k1, b) over documents keyed by small integer slots."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self._k1 = k1
        self._b = b
        self._postings: dict[str, dict[int, int]] = {}
        self._arrays: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = {}
        self._dense: dict[str, npt.NDArray[np.float32]] = {}
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
        order = np.argsort(slots, kind="stable")  # ascending slots: the kernels merge them in one pass
        slots, tf, lengths = slots[order], tf[order], lengths[order]
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

    def prepare(self, size: int, step: Callable[[], None] = lambda: None) -> None:
        """Build the arrays of every term in a few documents or more now (after a bulk load), not on first query;
        ``step`` is called between terms (a worker thread paces itself there)."""
        dense_from = self._dense_threshold()
        for term, postings in self._postings.items():
            step()
            if len(postings) >= dense_from:
                self._dense_array(term, size)
            elif len(postings) >= PREPARED_MIN:
                self._array(term)
        kernels().warm()  # compiled (or loaded from numba's disk cache) now, not by the first query

    def _buffer(self, size: int) -> npt.NDArray[np.float32]:
        # Reused between queries: a fresh 400 KB array per query costs page faults that dominate the arithmetic.
        if self._result is None or len(self._result) < size:
            self._result = np.zeros(max(1024, 2 * size), dtype=np.float32)
        return self._result[:size]

    def plan(self, terms: Iterable[str], size: int) -> Bm25Plan | None:
        """The query ``terms`` as the kernels score them over slots ``0..size-1``; ``None`` when none is indexed."""
        total = max(1, len(self._doc_len))
        dense_from = self._dense_threshold()
        kinds: list[int] = []
        idfs: list[float] = []
        dense: list[npt.NDArray[np.float32]] = []
        sparse: list[tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = []
        most = kernels().MAX_DENSE
        for term in dict.fromkeys(terms):
            postings = self._postings.get(term)
            if not postings:
                continue
            df = len(postings)
            idfs.append(math.log(1.0 + (total - df + 0.5) / (df + 0.5)))
            if df >= dense_from or term in self._dense:
                weights = self._dense_array(term, size)
                if len(dense) < most:
                    kinds.append(len(dense))
                    dense.append(weights)
                    continue
                # Past the kernels' dense arity: its non-zero weights as a sparse run (the same sums).
                at = np.flatnonzero(weights[:size])
                sparse.append((at.astype(np.int32), weights[at]))
            else:
                sparse.append(self._array(term))
            kinds.append(-len(sparse))
        return Bm25Plan(kinds, idfs, dense, sparse) if kinds else None

    def scores(self, terms: Iterable[str], size: int) -> npt.NDArray[np.float32] | None:
        """BM25 score per slot (dense, length ``size``) for the query ``terms``; ``None`` when nothing matches.

        The array is a buffer this index reuses: it is valid until the next call.
        """
        plan = self.plan(terms, size)
        if plan is None:
            return None
        result = self._buffer(size)
        kernels().dense_scores(
            size, plan.kinds, plan.idf, plan.dense, plan.sp_slots, plan.sp_weights, plan.sp_start, result
        )
        return result
