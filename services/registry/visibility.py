"""Visibility patterns: RE2 regexes over ``namespace/name``, evaluated once per pattern, off the event loop.

RE2 matches in linear time, so no pattern can backtrack for seconds; but even linear work over every agent is
too much for the event loop at 10,000 agents (a Python loop of ``fullmatch`` costs ~2 µs a name). So:

* a pattern's *possible match range* (RE2 computes it) narrows the scan to the sorted names that can match;
* what is left is scanned by RE2 itself over names joined by newlines, one call per run of consecutive
  matching names (``(?m)^(?:P)$\\C`` repeated: ``\\C`` eats the newline, ``never_nl`` keeps ``P`` on one line);
* a scan of more than a handful of names runs on one worker thread (RE2 releases the GIL while it matches),
  in chunks, against a time budget per request: a request that needs more is refused with INVALID_ARGUMENT,
  and the scan's progress is kept, so the next request with that pattern goes on from there;
* what a pattern matched is remembered per pattern and extended as agents arrive (names never change).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import functools
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

from agentmesh._errors import InvalidArgumentError
from agentmesh.services.registry._prefixes import ANY, EXACT, literal_prefixes
from agentmesh.services.registry.model import echo

__all__ = [
    "BUDGET_SECONDS",
    "MAX_PROGRAM_SIZE",
    "PatternError",
    "VisibilityIndex",
    "VisibilityPattern",
    "compile_all",
    "compile_pattern",
    "refuse_pattern",
    "warm_scanner",
]

# RE2 instructions one pattern may compile to: the cost of a scan grows with it when RE2 falls back from its
# DFA to its NFA (a pattern built to defeat the DFA).
MAX_PROGRAM_SIZE = 256
# The time one request may spend evaluating new patterns (on the worker thread) before it is refused.
BUDGET_SECONDS = 0.020
# At most this many names are checked one by one on the event loop per request; more go to the worker.
_ON_LOOP_NAMES = 64
# Names per RE2 call on the worker: small enough that the budget is checked often.
_CHUNK = 512
_MEMO_PATTERNS = 256
_MEMO_SCOPES = 256
# RE2's memory per compiled pattern (program and DFA cache): bounded so many cached patterns stay small.
_MAX_MEM = 1 << 20
# A flag group that turns multi-line mode off would unanchor the line scan.
_MULTILINE_OFF = re.compile(r"\(\?[A-Za-z]*-[A-Za-z]*m")


class PatternError(ValueError):
    """A visibility pattern RE2 cannot express or that is too costly; the message says why."""


def _options(*, never_nl: bool) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    options.max_mem = _MAX_MEM
    options.never_nl = never_nl
    return options


def _why(error: Exception) -> str:
    detail = error.args[0] if error.args else ""
    text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    if text.startswith("invalid perl operator: (?=") or text.startswith("invalid perl operator: (?!"):
        return "lookahead is not supported (RE2 syntax)"
    if text.startswith("invalid perl operator: (?<=") or text.startswith("invalid perl operator: (?<!"):
        return "lookbehind is not supported (RE2 syntax)"
    if text.startswith("invalid escape sequence: \\") and text[-1:].isdigit():
        return "backreferences are not supported (RE2 syntax)"
    if text == "invalid perl operator: (?P":
        return "named backreferences are not supported (RE2 syntax)"
    if text == "invalid escape sequence: \\Z":
        return r"\Z is not supported (RE2 syntax): use \z or $"
    return text or "not a valid RE2 regular expression"


class VisibilityPattern:
    """One visibility pattern: ``fullmatch`` for one name, and a line scanner for many.

    Made cheaply (text checks only); RE2 compiles it on first use, ``compile()``, which ``VisibilityIndex.prepare``
    calls on the worker thread: a hostile pattern can take ~0.5 ms to compile, sixteen of them 8 ms.
    """

    __slots__ = ("_error", "_lines", "_plain", "high", "low", "pattern", "prefixes")

    def __init__(self, pattern: str) -> None:
        if "\\C" in pattern:
            raise PatternError(r"\C (any byte) is not supported in visibility patterns")
        if _MULTILINE_OFF.search(pattern):
            raise PatternError("turning multi-line mode off is not supported in visibility patterns")
        self.pattern = pattern
        self._plain: Any = None
        self._error = ""
        self._lines: Any = None
        # Every name this pattern matches sorts between low and high (bytes; names are ASCII); set by compile().
        self.low, self.high = b"", b"\xff"
        # Sharper than the range for the usual shapes (``ns-(01|07)/.*``); None when the text says nothing.
        self.prefixes = literal_prefixes(pattern)

    @property
    def compiled(self) -> bool:
        """Whether ``compile()`` has succeeded."""
        return self._plain is not None

    def compile(self) -> None:
        """Compile with RE2 (once), or ``PatternError`` saying why RE2 cannot take it."""
        if self._plain is not None:
            return
        if not self._error:
            try:
                plain = re2.compile(self.pattern, _options(never_nl=False))
            except re2.error as exc:
                self._error = _why(exc)
            else:
                if plain.programsize > MAX_PROGRAM_SIZE:
                    self._error = (
                        f"too complex: {plain.programsize} RE2 instructions, at most {MAX_PROGRAM_SIZE}"
                    )
        if self._error:
            raise PatternError(self._error)
        try:
            self.low, self.high = plain.possiblematchrange(256)
        except re2.error:
            pass  # RE2 cannot bound it: every name
        self._plain = plain  # last: whoever sees it compiled sees the range too

    def __repr__(self) -> str:
        return f"VisibilityPattern({self.pattern!r})"

    def fullmatch(self, name: str) -> bool:
        """Whether ``name`` (``namespace/name``) matches the whole pattern."""
        self.compile()
        return self._plain.fullmatch(name) is not None

    def _line_scanner(self) -> Any:
        """The pattern over newline-joined names, compiled on first use (on the worker, not the event loop).

        Names hold no newline, so never_nl changes nothing for one name; in the joined text it keeps a match on
        its line, and ``$\\C`` (end of line, then the newline) joins consecutive matching names into one run.
        \\A and \\z are a name's ends, i.e. its line's.
        """
        if self._lines is None:
            line = self.pattern.replace("\\A", "^").replace("\\z", "$")
            try:
                self._lines = re2.compile(f"(?m)^(?:(?:{line})$\\C)*(?:{line})$", _options(never_nl=True))
            except re2.error:  # the doubled program outgrew RE2's memory bound: match the names one by one
                self._lines = False
        return self._lines

    def scan(self, names: Sequence[str]) -> npt.NDArray[np.int64]:
        """Positions in ``names`` (ASCII, no newline) that match, ascending; one RE2 call per run of matches."""
        scanner = self._line_scanner()
        if scanner is False:
            return np.array([i for i, name in enumerate(names) if self.fullmatch(name)], dtype=np.int64)
        text = "\n".join(names).encode()
        runs = [(match.start(), match.end()) for match in scanner.finditer(text)]
        if not runs:
            return _NO_POSITIONS
        # Line i starts at starts[i]; a run's ends are the first and last lines it covers (vectorised: the
        # worker holds the GIL as little as it can).
        starts = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 10) + 1
        bounds = np.searchsorted(starts, np.array(runs, dtype=np.int64).ravel(), side="right")
        return np.concatenate([np.arange(first, last + 1) for first, last in bounds.reshape(-1, 2).tolist()])


_NO_POSITIONS = np.zeros(0, dtype=np.int64)


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> VisibilityPattern:
    """``pattern`` as a visibility pattern (cached; RE2 compiles it on first use), or ``PatternError`` when its
    text alone says it cannot be one."""
    return VisibilityPattern(pattern)


def refuse_pattern(index: int, pattern: str, why: str) -> InvalidArgumentError:
    """The INVALID_ARGUMENT for the ``index``-th visibility pattern, saying why."""
    return InvalidArgumentError(
        f"pattern {echo(pattern)} is not a usable regular expression: {why}",
        field=f"visibility.patterns[{index}]",
    )


def compile_all(patterns: Sequence[VisibilityPattern]) -> None:
    """Compile every pattern now, or INVALID_ARGUMENT naming the first that RE2 cannot take."""
    for index, pattern in enumerate(patterns):
        try:
            pattern.compile()
        except PatternError as exc:
            raise refuse_pattern(index, pattern.pattern, str(exc)) from None


def warm_scanner() -> None:
    """Pay the first scan's one-time costs (~20 ms seen on a busy machine) before serving, not in a request."""
    warm = VisibilityPattern("warm/(up|x)+")
    warm.compile()
    warm.scan(["warm/up", "warm/x", "warm/no"])


class _Work:
    """A scan of one pattern over a snapshot of names (and the agent indexes they stand for), resumable: a
    request whose budget runs out leaves its progress for the next one."""

    __slots__ = ("busy", "done", "hits", "ixs", "matches", "names", "pattern", "position")

    def __init__(
        self, pattern: VisibilityPattern, matches: _Matches, names: list[str], ixs: list[int], done: int
    ) -> None:
        self.pattern, self.matches, self.names, self.ixs, self.done = pattern, matches, names, ixs, done
        self.position = 0  # names[:position] are scanned
        self.hits: list[npt.NDArray[np.int64]] = []
        self.busy = 0  # runs submitted to the worker and not yet back: only the worker may touch it then

    @property
    def left(self) -> int:
        return len(self.names) - self.position

    def run(self, deadline: float) -> bool:
        """Scan on in chunks from where the last run stopped (one chunk at least, so every request gets on);
        ``False`` when ``deadline`` passed before the end."""
        while self.position < len(self.names):
            start = self.position
            chunk = self.names[start : start + _CHUNK]
            positions = self.pattern.scan(chunk)
            if len(positions):
                self.hits.append(np.array(self.ixs[start : start + len(chunk)], dtype=np.int64)[positions])
            self.position = start + len(chunk)
            if self.position < len(self.names) and time.monotonic() > deadline:
                return False
        return True


class _Matches:
    """What one pattern matched: a flag per agent for the first ``done`` agents, and the scan in progress."""

    __slots__ = ("done", "flags", "work")

    def __init__(self) -> None:
        self.done = 0
        self.flags = np.zeros(0, dtype=np.bool_)
        self.work: _Work | None = None

    def finish(self, work: _Work) -> None:
        """Take the hits of a completed scan (once; a scan that covers no more than is known changes nothing)."""
        if self.work is work:
            self.work = None
        if work.done <= self.done:
            return
        if work.done > len(self.flags):
            grown = np.zeros(max(work.done, 2 * len(self.flags)), dtype=np.bool_)
            grown[: len(self.flags)] = self.flags
            self.flags = grown
        for hits in work.hits:
            self.flags[hits] = True
        self.done = work.done


def _run_all(work: list[_Work], deadline: float) -> bool:
    return all(item.run(deadline) for item in work)


class VisibilityIndex:
    """Which agents each visibility scope lets through: per pattern memoised, per scope combined."""

    def __init__(self, keys: list[str], ixs: dict[str, int]) -> None:
        # The discovery index's agent keys by agent index (append-only) and their indexes, shared; add() is told
        # of each new agent.
        self._keys = keys
        self._ixs = ixs
        self._sorted: list[str] = []
        self._sorted_ix: list[int] = []
        self._sorted_ix_array: npt.NDArray[np.int64] | None = None
        self._patterns: OrderedDict[str, _Matches] = OrderedDict()
        self._scopes: OrderedDict[object, tuple[int, npt.NDArray[np.bool_]]] = OrderedDict()
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    def add(self, key: str, ix: int) -> None:
        """A new agent ``key`` got index ``ix``."""
        position = bisect.bisect_left(self._sorted, key)
        self._sorted.insert(position, key)
        self._sorted_ix.insert(position, ix)
        self._sorted_ix_array = None

    # ------------------------------------------------------------------ evaluation

    def _matches(self, pattern: VisibilityPattern) -> _Matches:
        matches = self._patterns.get(pattern.pattern)
        if matches is None:
            matches = self._patterns[pattern.pattern] = _Matches()
            while len(self._patterns) > _MEMO_PATTERNS:
                self._patterns.popitem(last=False)
        else:
            self._patterns.move_to_end(pattern.pattern)
        return matches

    def _pending(self, patterns: Sequence[VisibilityPattern], *, shared: bool) -> list[_Work]:
        """For each pattern not yet checked against every agent, the scan that would bring it up to date: the
        one in progress when ``shared`` (and a new one is left as the pattern's scan in progress), else a
        private one."""
        total = len(self._keys)
        work = []
        for pattern in patterns:
            matches = self._matches(pattern)
            if matches.done == total:
                continue
            if shared and matches.work is not None:
                work.append(matches.work)
                continue
            if matches.done == 0:
                item = self._first_scan(pattern, matches, total)
            else:
                names, ixs = self._keys[matches.done : total], list(range(matches.done, total))
                item = _Work(pattern, matches, names, ixs, total)
            if shared:
                matches.work = item
            work.append(item)
        return work

    def _first_scan(self, pattern: VisibilityPattern, matches: _Matches, total: int) -> _Work:
        """The scan of a new pattern: only the sorted names that can match (copies, so arrivals during the scan
        change nothing); names its literal prefixes settle (an exact name, ``prefix.*``) are hits already."""
        pattern.compile()  # done already on the worker when prepare() brought it here
        if pattern.prefixes is None:  # RE2's possible match range
            low = bisect.bisect_left(self._sorted, pattern.low, key=str.encode)
            high = bisect.bisect_right(self._sorted, pattern.high, key=str.encode)
            return _Work(pattern, matches, self._sorted[low:high], self._sorted_ix[low:high], total)
        if self._sorted_ix_array is None:
            self._sorted_ix_array = np.array(self._sorted_ix, dtype=np.int64)
        settled: list[npt.NDArray[np.int64]] = []
        ranges: list[tuple[int, int]] = []
        for prefix, kind in pattern.prefixes:
            if kind == EXACT:
                ix = self._ixs.get(prefix)
                if ix is not None and ix < total:
                    settled.append(np.array([ix], dtype=np.int64))
                continue
            low = bisect.bisect_left(self._sorted, prefix)
            high = bisect.bisect_left(self._sorted, prefix + "\U0010ffff")
            if kind == ANY:
                settled.append(self._sorted_ix_array[low:high].copy())
            else:
                ranges.append((low, high))
        names: list[str] = []
        ixs: list[int] = []
        end = 0
        for low, high in sorted(ranges):  # overlapping prefixes (ns-0, ns-01) scan their names once
            low = max(low, end)
            if low < high:
                names += self._sorted[low:high]
                ixs += self._sorted_ix[low:high]
                end = high
        item = _Work(pattern, matches, names, ixs, total)
        item.hits = settled
        return item

    @staticmethod
    def _refusal(patterns: Sequence[VisibilityPattern], work: list[_Work]) -> InvalidArgumentError:
        shown = ", ".join(echo(p.pattern, 60) for p in patterns[:3]) + (", …" if len(patterns) > 3 else "")
        scanned, names = sum(w.position for w in work), sum(len(w.names) for w in work)
        return InvalidArgumentError(
            f"visibility patterns {shown} could not be checked within {BUDGET_SECONDS * 1000:.0f} ms "
            f"({scanned} of {names} names so far; the next request goes on from there); start patterns with a "
            "literal prefix (e.g. 'team/.*') or list names",
            field="visibility.patterns",
        )

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="visibility")
        return self._worker

    async def prepare(self, patterns: Sequence[VisibilityPattern]) -> None:
        """Bring every pattern's matches up to date, scanning on the worker thread when more than a few names
        are left; INVALID_ARGUMENT when this request's budget runs out first (its progress is kept)."""
        deadline = time.monotonic() + BUDGET_SECONDS
        if not all(p.compiled for p in patterns):
            await asyncio.get_running_loop().run_in_executor(self._executor(), compile_all, patterns)
        while True:
            work = self._pending(patterns, shared=True)
            if not work:
                return
            if sum(w.left for w in work) <= _ON_LOOP_NAMES and not any(w.busy for w in work):
                complete = _run_all(work, deadline)
            else:
                worker = self._executor()
                for item in work:
                    item.busy += 1
                try:
                    complete = await asyncio.get_running_loop().run_in_executor(
                        worker, _run_all, work, deadline
                    )
                finally:
                    for item in work:
                        item.busy -= 1
            for item in work:
                if not item.left:
                    item.matches.finish(item)
            if not complete:
                raise self._refusal(patterns, work)

    def _evaluate(self, patterns: Sequence[VisibilityPattern]) -> None:
        """Bring every pattern's matches up to date on this thread, with private scans (``prepare`` usually
        left nothing to do)."""
        compile_all(patterns)
        work = self._pending(patterns, shared=False)
        if not _run_all(work, time.monotonic() + BUDGET_SECONDS):
            raise self._refusal(patterns, work)
        for item in work:
            item.matches.finish(item)

    # ------------------------------------------------------------------ answers

    def visible(self, names: frozenset[str], patterns: Sequence[VisibilityPattern]) -> npt.NDArray[np.bool_]:
        """Per agent index, whether the scope (``names`` or any of ``patterns``) lets it through."""
        total = len(self._keys)
        key = (names, tuple(p.pattern for p in patterns))
        cached = self._scopes.get(key)
        if cached is not None and cached[0] == total:
            self._scopes.move_to_end(key)
            return cached[1]
        self._evaluate(patterns)
        flags = np.zeros(total, dtype=np.bool_)
        for pattern in patterns:
            flags |= self._matches(pattern).flags[:total]
        for name in names:
            ix = self._ixs.get(name)
            if ix is not None and ix < total:
                flags[ix] = True
        self._scopes[key] = (total, flags)
        while len(self._scopes) > _MEMO_SCOPES:
            self._scopes.popitem(last=False)
        return flags

    def matched_by(self, patterns: Sequence[VisibilityPattern], ix: int, key: str) -> str:
        """The first of ``patterns`` that agent ``ix`` (``key``) matches."""
        for pattern in patterns:
            matches = self._patterns.get(pattern.pattern)
            if matches is not None and ix < matches.done:
                if matches.flags[ix]:
                    return pattern.pattern
            elif pattern.fullmatch(key):
                return pattern.pattern
        return ""
