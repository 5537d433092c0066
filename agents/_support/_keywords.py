"""Word-for-word phrase matching that ignores case and accents (``Rückerstattung`` = ``ruckerstattung``):
the multilingual cue the English embedding model lacks.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["PhraseMatcher", "fold"]


def fold(text: str) -> str:
    """Lower case, accents removed, apostrophes unified, whitespace collapsed."""
    decomposed = unicodedata.normalize("NFKD", text.replace("\u2019", "'").lower())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


class PhraseMatcher:
    """Which of a fixed set of phrases occur in a text, as whole words (a ``*`` matches any word ending:
    ``cancel*`` matches cancelled and cancellation, ``cobr* dos veces`` matches cobraron dos veces)."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases = sorted({fold(p) for p in phrases if p.strip()})
        patterns = [re.escape(p).replace(r"\*", r"\w*") for p in self.phrases]
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(sorted(patterns, key=len, reverse=True)) + r")(?!\w)")
            if patterns
            else None
        )

    def find(self, text: str) -> list[str]:
        """The phrases found in ``text`` (folded), each once, longest match first at each position."""
        if self._pattern is None:
            return []
        return list(dict.fromkeys(m.group(0) for m in self._pattern.finditer(fold(text))))
