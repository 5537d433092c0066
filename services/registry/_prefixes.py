"""Literal prefixes of a visibility pattern, read from its text, for the common shapes only.

``ns-(01|07)/.*`` means: names starting ``ns-01/`` or ``ns-07/``, all of them. RE2's possible match range
for it is ``ns-01/`` .. ``ns-07/…`` (every namespace between), so a pattern listing namespaces would scan most
of a large registry. This reader understands only a small RE2-compatible subset: literal characters of names,
simple classes (``[0-3]``, ``[ab]``), groups of literal alternatives (``(a|b)``, ``(?:a|b)``), top-level ``|``,
``^`` and ``$`` at the ends, and a final ``.*``. Anything else ends the prefix there ("check the rest"), so
what it says always holds: every match starts with one of the prefixes it returns.
"""

from __future__ import annotations

__all__ = ["ANY", "CHECK", "EXACT", "literal_prefixes"]

# What is known of the names a prefix stands for: they must equal it, they all match, or each must be checked.
EXACT, ANY, CHECK = 0, 1, 2

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-/")
_ESCAPED = frozenset("-/.")
_QUANTIFIERS = frozenset("*+?{")
_MAX_PREFIXES = 64


def _class(text: str, at: int) -> tuple[list[str], int] | None:
    """The characters of the simple class starting at ``text[at] == '['``, and the index after it."""
    chars: list[str] = []
    i = at + 1
    while i < len(text) and text[i] != "]":
        if i + 2 < len(text) and text[i + 1] == "-" and text[i + 2] != "]":
            first, last = text[i], text[i + 2]
            if not (
                first.isalnum() and last.isalnum() and first.isascii() and last.isascii() and first <= last
            ):
                return None
            chars += [chr(c) for c in range(ord(first), ord(last) + 1)]
            i += 3
        elif text[i] in _NAME_CHARS:
            chars.append(text[i])
            i += 1
        else:
            return None
    if i >= len(text) or not chars:
        return None
    return [c for c in dict.fromkeys(chars) if c in _NAME_CHARS], i + 1


def _group(text: str, at: int) -> tuple[list[str], int] | None:
    """The literal alternatives of the group starting at ``text[at] == '('``, and the index after it."""
    i = at + 1
    if text.startswith("?:", i):
        i += 2
    elif text.startswith("?", i):
        return None  # flags or a named group: not this reader's business
    end = text.find(")", i)
    if end < 0:
        return None
    alternatives = text[i:end].split("|")
    if not all(all(c in _NAME_CHARS for c in alternative) for alternative in alternatives):
        return None
    return list(dict.fromkeys(alternatives)), end + 1


def _branches(text: str) -> list[str] | None:
    """``text`` split at its top-level ``|`` (escapes, classes and groups skipped), or None when unbalanced."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            j = i + 1
            j += text.startswith("^", j)
            j += text.startswith("]", j)  # a "]" right after "[" (or "[^") is a literal in RE2
            close = text.find("]", j)
            if close < 0 or "[" in text[j:close] or "\\" in text[j:close]:
                return None  # POSIX classes, escapes: not this reader's business
            i = close + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return None
        elif c == "|" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if depth:
        return None
    parts.append(text[start:])
    return parts


def _branch(text: str) -> list[tuple[str, int]]:
    """The literal prefixes of one alternative, each with what is known of the names starting with it."""
    prefixes = [""]
    i = 1 if text.startswith("^") else 0
    end = len(text) - 1 if text.endswith("$") and not text.endswith("\\$") else len(text)
    while i < end:
        if text[i] == "." and text[i + 1 : end] == "*":
            return [(p, ANY) for p in prefixes]
        c = text[i]
        step: tuple[list[str], int] | None
        if c in _NAME_CHARS:
            step = [c], i + 1
        elif c == "\\" and i + 1 < end and text[i + 1] in _ESCAPED:
            step = [text[i + 1]], i + 2
        elif c == "[":
            step = _class(text, i)
        elif c == "(":
            step = _group(text, i)
        else:
            step = None
        if step is None or (step[1] < end and text[step[1]] in _QUANTIFIERS):
            return [(p, CHECK) for p in prefixes]
        options, i = step
        prefixes = [p + o for p in prefixes for o in options]
        if len(prefixes) > _MAX_PREFIXES:
            return [("", CHECK)]
    return [(p, EXACT) for p in prefixes]


def literal_prefixes(pattern: str) -> list[tuple[str, int]] | None:
    """Literal prefixes one of which every match of ``pattern`` starts with, each with what is known of the
    names that start with it ([("ns-01/", ANY), ("ns-07/", ANY)] for ``ns-0(1|7)/.*``); None when nothing
    useful is known (a branch with no prefix)."""
    branches = _branches(pattern)
    if branches is None:
        return None
    out = [item for branch in branches for item in _branch(branch)]
    if len(out) > _MAX_PREFIXES or any(prefix == "" and kind != EXACT for prefix, kind in out):
        return None
    return out
