"""Visibility patterns in RE2: what they may say, that the scan agrees with fullmatch, and the budget."""

from __future__ import annotations

import random
import re
import threading
from typing import Any

import numpy as np
import pytest

from agentmesh._errors import InvalidArgumentError
from agentmesh.services.registry import visibility
from agentmesh.services.registry._prefixes import ANY, EXACT
from agentmesh.services.registry.model import echo
from agentmesh.services.registry.validation import (
    MAX_NAMES,
    compile_patterns,
    parse_specifier,
    validate_visibility_names,
)
from agentmesh.services.registry.visibility import VisibilityIndex, compile_all, compile_pattern


def _index(keys: list[str]) -> VisibilityIndex:
    ixs = {key: ix for ix, key in enumerate(keys)}
    index = VisibilityIndex(keys, ixs)
    for ix, key in enumerate(keys):
        index.add(key, ix)
    return index


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a+)\1", "backreferences are not supported"),
        (r"(?P<x>a)(?P=x)", "named backreferences are not supported"),
        (r"(?=a)a", "lookahead is not supported"),
        (r"(?!a)b", "lookahead is not supported"),
        (r"(?<=a)b", "lookbehind is not supported"),
        (r"(?<!a)b", "lookbehind is not supported"),
        (r"a\Z", r"use \z or $"),
        (r"a\Cb", "any byte"),
        (r"(?-m)^a$", "multi-line"),
        (r"[a-z]{300}", "too complex"),
        ("support/(unclosed", "missing )"),
    ],
)
def test_what_re2_cannot_express_is_refused_saying_why(pattern: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        compile_all(compile_patterns(["support/.*", pattern]))
    assert refused.value.field == "visibility.patterns[1]"
    assert why in str(refused.value)


def test_the_line_scan_agrees_with_fullmatch_on_random_patterns_and_names() -> None:
    rng = random.Random(7)
    alphabet = "ab-/0"
    keys = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(800)})
    pieces = ["a", "b", "-", "/", "0", ".", "[ab]", "[^a]", "\\d", "\\w", "\\s", "(?s:.)", "\\n"]
    quantifiers = ["", "", "*", "+", "?", "{2}", "{1,3}"]
    for _ in range(150):
        body = "".join(rng.choice(pieces) + rng.choice(quantifiers) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.3:
            body = f"({body})|{rng.choice(pieces)}*b"
        if rng.random() < 0.2:
            body = f"^{body}$"
        pattern = compile_pattern(body)
        expected = [i for i, key in enumerate(keys) if re.fullmatch(body.replace("\\z", "\\Z"), key)]
        assert pattern.scan(keys).tolist() == expected, body
        assert [i for i, key in enumerate(keys) if pattern.fullmatch(key)] == expected, body


def test_a_narrow_pattern_checks_only_the_names_in_its_range_and_arrivals_are_seen() -> None:
    keys = [f"ns-{i % 50:02d}/agent-{i:05d}" for i in range(5000)]
    index = _index(keys)
    (pattern,) = compile_patterns(["ns-07/.*"])
    (work,) = index._pending([pattern], shared=False)
    assert (work.names, sum(map(len, work.hits))) == ([], 100)  # a literal prefix and ".*": no scan at all
    (checked,) = compile_patterns(["ns-07/agent-0.*7"])
    (work,) = index._pending([checked], shared=False)
    assert len(work.names) == 100  # one namespace of fifty scanned, not every name
    (ranged,) = compile_patterns(["(?:ns-07/agent-.*7)"])  # beyond the prefix reader: RE2's match range
    (work,) = index._pending([ranged], shared=False)
    assert len(work.names) == 100
    flags = index.visible(frozenset(), [pattern])
    assert np.flatnonzero(flags).tolist() == [i for i, key in enumerate(keys) if key.startswith("ns-07/")]
    keys.append("ns-07/late")
    index._ixs["ns-07/late"] = len(keys) - 1  # what the discovery index does for a new agent
    index.add("ns-07/late", len(keys) - 1)
    assert index.visible(frozenset(), [pattern])[-1]
    assert index.visible(frozenset({"ns-01/agent-00001"}), [])[1]


async def test_prepare_scans_off_the_event_loop_and_refuses_past_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [f"{'a' * 50}/{'a' * 40}{i:05d}" for i in range(4000)]
    index = _index(keys)
    patterns = compile_patterns([r".*a.{20}", r"(a|aa)+b"])
    threads: set[str] = set()
    scan = visibility.VisibilityPattern.scan

    def spy(self: visibility.VisibilityPattern, names: list[str]) -> Any:
        threads.add(threading.current_thread().name)
        return scan(self, names)

    monkeypatch.setattr(visibility.VisibilityPattern, "scan", spy)
    compile_ = visibility.VisibilityPattern.compile

    def compile_spy(self: visibility.VisibilityPattern) -> None:
        if not self.compiled:
            threads.add(threading.current_thread().name)
        compile_(self)

    monkeypatch.setattr(visibility.VisibilityPattern, "compile", compile_spy)
    monkeypatch.setattr(visibility, "BUDGET_SECONDS", 5.0)  # the point here is where it runs, not how fast
    await index.prepare(patterns)
    assert threads and all(name.startswith("visibility") for name in threads)
    assert int(index.visible(frozenset(), patterns).sum()) == len(keys)

    # A budget one chunk of names fills: refused, saying what to do instead, but each request gets further
    # (4000 names are eight chunks), so the eighth is answered and the pattern is remembered.
    monkeypatch.setattr(visibility, "BUDGET_SECONDS", 0.0)
    fresh = compile_patterns([r"(.*a){12}[0-9]{5}"])
    for attempt in range(7):
        with pytest.raises(InvalidArgumentError) as refused:
            await index.prepare(fresh)
        assert refused.value.field == "visibility.patterns"
        assert f"{(attempt + 1) * 512} of 4000 names so far" in str(refused.value)
        assert "literal prefix" in str(refused.value)
    await index.prepare(fresh)
    assert int(index.visible(frozenset(), fresh).sum()) == len(keys)


def test_scopes_and_constraints_are_bounded_and_echo_stays_short() -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        validate_visibility_names([f"ns/a{i}" for i in range(MAX_NAMES + 1)])
    assert refused.value.field == "visibility.names"
    with pytest.raises(InvalidArgumentError) as refused:
        validate_visibility_names(["no-slash"])
    assert refused.value.field == "visibility.names[0]"
    with pytest.raises(InvalidArgumentError) as refused:
        parse_specifier(",".join(f"!=0.{i}" for i in range(1000)))
    assert len(str(refused.value)) < 200
    assert echo("x" * 10_000).endswith("… (10000 characters)") and len(echo("x" * 10_000)) < 120


def test_literal_prefixes_always_hold_against_re2() -> None:
    rng = random.Random(11)
    keys = sorted(
        {
            f"ns-{rng.randint(0, 12):02d}/{rng.choice(['tri', 'ref', 'x'])}{rng.randint(0, 30)}"
            for _ in range(600)
        }
    )
    pieces = [
        "ns-0",
        "ns-1",
        "/",
        "[0-3]",
        "[13]",
        "(01|07)",
        "(?:1|2)",
        "tri",
        "x",
        ".*",
        ".",
        "[a-z]+",
        "\\d",
        "?",
        "(?i)",
    ]
    for _ in range(400):
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.3:
            body += "|" + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 3)))
        try:
            compiled = compile_pattern(body)
            compiled.compile()
        except visibility.PatternError:
            continue
        if compiled.prefixes is None:
            continue
        for key in keys:
            matched = compiled.fullmatch(key)
            starts = [(p, kind) for p, kind in compiled.prefixes if key.startswith(p)]
            assert not matched or starts, (body, key)
            assert all(matched for p, kind in starts if kind == ANY), (body, key)
            assert not matched or any(kind != EXACT or p == key for p, kind in starts), (body, key)
