"""Compiled (numba) BM25 kernels of the registry's text index: one pass over the slots per query.

A query's terms come in query order, each either *dense* (a float32 weight per slot, 0 where absent) or
*sparse* (ascending slots and their weights). Every kernel computes a slot's score with the float32 operations,
in the order, that the numpy computation used: ``((0 + w1 * idf1) + w2 * idf2) + ...`` over the terms the slot
has, then times its boost. Scores are therefore bit-identical to it (no fastmath: nothing is reassociated or
fused into an FMA).

Slots are scored in blocks of ``_BLOCK`` in a stack buffer that stays in L1: every term's weights are read once,
nothing of the size of the index is written (except by :func:`dense_scores`, which is asked for it).

Imported lazily (numba: ~0.1 s and ~64 MiB; loading these kernels ~0.3 s, compiling them ~4 s): only by the text
index, on first use (`TextIndex.prepare` warms them). Compiled functions are
cached on disk (``cache=True``: in ``__pycache__`` next to this file, or numba's user-wide cache directory when
that is not writable; ``NUMBA_CACHE_DIR`` overrides both).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["MAX_DENSE", "dense_scores", "ranked_at", "top_ranked", "warm"]

# Dense terms passed as a fixed-size tuple (one compiled signature); a query with more moves the rest to the
# sparse side (their non-zero slots), which gives the same sums.
MAX_DENSE = 8
_BLOCK = 512
# Within a block, slots are checked against the heap's floor in chunks: only a chunk with a slot above it is
# walked one slot at a time (a few hundred chunks per query once the heap is full, against ~200 blocks of 512).
_CHUNK = 32


@numba.njit(cache=True, inline="always")
def _block(
    base: int,
    end: int,
    buf: Any,
    kinds: Any,
    idf: Any,
    dense: Any,
    sp_slots: Any,
    sp_weights: Any,
    sp_end: Any,
    cursors: Any,
) -> None:
    """BM25 of slots ``base..end-1`` into ``buf[:end-base]``; sparse cursors advance past ``end``."""
    n = end - base
    first = True
    for t in range(len(kinds)):
        kind = kinds[t]
        scale = idf[t]
        if kind >= 0:
            weights = dense[kind][base:end]  # a view: i >= 0 is known, so the loop vectorises
            if first:
                for i in range(n):
                    buf[i] = weights[i] * scale
                first = False
            else:
                for i in range(n):
                    buf[i] += weights[i] * scale
        else:
            term = -1 - kind
            if first:
                for i in range(n):
                    buf[i] = np.float32(0.0)
                first = False
            c = cursors[term]
            stop = sp_end[term]
            while c < stop and sp_slots[c] < end:
                buf[sp_slots[c] - base] += sp_weights[c] * scale
                c += 1
            cursors[term] = c


@numba.njit(cache=True)
def _first_pending(cursors: Any, sp_slots: Any, sp_end: Any, size: int) -> int:
    """The lowest slot a sparse term still has (``size`` when none)."""
    low = size
    for term in range(len(cursors)):
        c = cursors[term]
        if c < sp_end[term] and sp_slots[c] < low:
            low = sp_slots[c]
    return low


@numba.njit(cache=True, inline="always")
def _worse(score_a: float, slot_a: int, score_b: float, slot_b: int) -> bool:
    """Whether (score_a, slot_a) ranks below (score_b, slot_b): a lower score, or the same and a higher slot."""
    return score_a < score_b or (score_a == score_b and slot_a > slot_b)


@numba.njit(cache=True)
def _sift_down(heap_scores: Any, heap_slots: Any, held: int, score: Any, slot: Any) -> None:
    """Put (score, slot) at the root of the min-heap ``[:held]`` (the worst on top) and sift it down."""
    j = 0
    while True:
        child = 2 * j + 1
        if child >= held:
            break
        right = child + 1
        if right < held and _worse(
            heap_scores[right], heap_slots[right], heap_scores[child], heap_slots[child]
        ):
            child = right
        if not _worse(heap_scores[child], heap_slots[child], score, slot):
            break
        heap_scores[j] = heap_scores[child]
        heap_slots[j] = heap_slots[child]
        j = child
    heap_scores[j] = score
    heap_slots[j] = slot


@numba.njit(cache=True)
def top_ranked(
    size: int,
    kinds: npt.NDArray[np.int64],
    idf: npt.NDArray[np.float32],
    dense: tuple[npt.NDArray[np.float32], ...],
    n_dense: int,
    sp_slots: npt.NDArray[np.int32],
    sp_weights: npt.NDArray[np.float32],
    sp_start: npt.NDArray[np.int64],
    boost: npt.NDArray[np.float32],
    serving: npt.NDArray[np.int32],
    count_serving: bool,
    wanted: int,
    out_slots: npt.NDArray[np.int64],
    out_scores: npt.NDArray[np.float32],
) -> tuple[int, int, int]:
    """Rank slots ``0..size-1`` by BM25 times ``boost`` in one pass; keep the best ``wanted`` (> 0).

    Returns (slots with a positive ranked score, their SERVING instances when ``count_serving`` else that
    count again, how many best slots were written). ``out_slots`` / ``out_scores`` get the best slots by score,
    highest first, a tie by lower slot first.
    """
    buf = np.empty(_BLOCK, dtype=np.float32)
    n_sparse = len(sp_start) - 1
    cursors = sp_start[:n_sparse].copy()
    sp_end = sp_start[1:]
    heap_scores = np.empty(max(wanted, 1), dtype=np.float32)
    heap_slots = np.empty(max(wanted, 1), dtype=np.int64)
    held = 0
    floor = np.float32(0.0)  # a slot must beat this to enter (the heap's minimum once it is full)
    positive = 0
    instances = 0
    base = 0
    while base < size:
        if n_dense == 0:  # only rare terms: skip to the block of the next slot one of them has
            low = _first_pending(cursors, sp_slots, sp_end, size)
            if low >= size:
                break
            base = low - low % _BLOCK
        end = min(base + _BLOCK, size)
        n = end - base
        _block(base, end, buf, kinds, idf, dense, sp_slots, sp_weights, sp_end, cursors)
        factor = boost[base:end]
        count = 0
        for i in range(n):
            ranked = buf[i] * factor[i]
            buf[i] = ranked
            count += ranked > 0
        for chunk in range(0, n, _CHUNK):
            stop = min(chunk + _CHUNK, n)
            part = buf[chunk:stop]
            above = 0
            for i in range(len(part)):
                above += part[i] > floor
            if not above:  # the usual case once the heap is full: nothing here can enter it
                continue
            for i in range(chunk, stop):
                score = buf[i]
                if score > floor:
                    slot = base + i
                    if held < wanted:
                        # sift up
                        j = held
                        held += 1
                        while j > 0:
                            parent = (j - 1) // 2
                            if _worse(heap_scores[parent], heap_slots[parent], score, slot):
                                break
                            heap_scores[j] = heap_scores[parent]
                            heap_slots[j] = heap_slots[parent]
                            j = parent
                        heap_scores[j] = score
                        heap_slots[j] = slot
                        if held == wanted:
                            floor = heap_scores[0]
                    else:  # replace the worst kept
                        _sift_down(heap_scores, heap_slots, held, score, slot)
                        floor = heap_scores[0]
        if count:
            positive += count
            if count_serving:
                live = serving[base:end]
                for i in range(n):
                    if buf[i] > 0:
                        instances += live[i]
        base = end
    # best first, a tie by lower slot first: pop the worst to the end, one at a time (heapsort)
    for last in range(held - 1, -1, -1):
        out_scores[last] = heap_scores[0]
        out_slots[last] = heap_slots[0]
        _sift_down(heap_scores, heap_slots, last, heap_scores[last], heap_slots[last])
    return positive, instances if count_serving else positive, held


@numba.njit(cache=True)
def dense_scores(
    size: int,
    kinds: npt.NDArray[np.int64],
    idf: npt.NDArray[np.float32],
    dense: tuple[npt.NDArray[np.float32], ...],
    sp_slots: npt.NDArray[np.int32],
    sp_weights: npt.NDArray[np.float32],
    sp_start: npt.NDArray[np.int64],
    out: npt.NDArray[np.float32],
) -> None:
    """BM25 of every slot ``0..size-1`` into ``out``."""
    buf = np.empty(_BLOCK, dtype=np.float32)
    n_sparse = len(sp_start) - 1
    cursors = sp_start[:n_sparse].copy()
    sp_end = sp_start[1:]
    base = 0
    while base < size:
        end = min(base + _BLOCK, size)
        _block(base, end, buf, kinds, idf, dense, sp_slots, sp_weights, sp_end, cursors)
        out[base:end] = buf[: end - base]
        base = end


@numba.njit(cache=True)
def ranked_at(
    slots: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.int64],
    idf: npt.NDArray[np.float32],
    dense: tuple[npt.NDArray[np.float32], ...],
    sp_slots: npt.NDArray[np.int32],
    sp_weights: npt.NDArray[np.float32],
    sp_start: npt.NDArray[np.int64],
    boost: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """BM25 times ``boost`` of each of ``slots`` (any order, repeats allowed)."""
    out = np.empty(len(slots), dtype=np.float32)
    for k in range(len(slots)):
        slot = slots[k]
        score = np.float32(0.0)
        for t in range(len(kinds)):
            kind = kinds[t]
            if kind >= 0:
                score += dense[kind][slot] * idf[t]
            else:
                term = -1 - kind
                low, high = sp_start[term], sp_start[term + 1]
                while low < high:  # binary search of the ascending run
                    middle = (low + high) // 2
                    if sp_slots[middle] < slot:
                        low = middle + 1
                    else:
                        high = middle
                at = low
                if at < sp_start[term + 1] and sp_slots[at] == slot:
                    score += sp_weights[at] * idf[t]
        out[k] = score * boost[slot]
    return out


def warm() -> None:
    """Compile (or load from the disk cache) every kernel now, with a tiny call each."""
    weights = np.ones(4, dtype=np.float32)
    dense = (weights,) * MAX_DENSE
    kinds = np.array([0, -1], dtype=np.int64)
    idf = np.ones(2, dtype=np.float32)
    sp_slots = np.array([1], dtype=np.int32)
    sp_weights = np.ones(1, dtype=np.float32)
    sp_start = np.array([0, 1], dtype=np.int64)
    serving = np.ones(4, dtype=np.int32)
    out_slots = np.empty(2, dtype=np.int64)
    out_scores = np.empty(2, dtype=np.float32)
    top_ranked(
        4,
        kinds,
        idf,
        dense,
        1,
        sp_slots,
        sp_weights,
        sp_start,
        weights,
        serving,
        True,
        2,
        out_slots,
        out_scores,
    )
    dense_scores(4, kinds, idf, dense, sp_slots, sp_weights, sp_start, np.empty(4, dtype=np.float32))
    ranked_at(np.array([1], dtype=np.int64), kinds, idf, dense, sp_slots, sp_weights, sp_start, weights)
