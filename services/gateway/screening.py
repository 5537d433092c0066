"""An input screen for prompt-injection markers: text that tries to give the mesh's models instructions.

It flags, it does not understand: a match means "treat this ticket's instructions as data", and by policy
(``AGENTMESH_GATEWAY_INJECTION_POLICY=reject``) the gateway refuses the request instead. A flagged task
carries ``input._screening = {"suspected_prompt_injection": true, "markers": [...]}`` so the responder and
quality_check can see it. Patterns are plain alternations without nested quantifiers (linear time).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SCREENING_FIELD", "ScreenResult", "screen"]

SCREENING_FIELD = "_screening"
_MAX_SCANNED_CHARS = 200_000

_MARKERS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    for name, pattern in {
        "override-instructions": r"\b(?:ignore|disregard|forget|override|skip)\b(?:\W+\w+){0,3}?\W+"
        r"(?:instructions?|rules|prompts?|guidelines|polic(?:y|ies)|directions)\b",
        "role-change": r"\b(?:you are now|from now on,? you|act as (?:an?|the)|pretend (?:to be|you are)|"
        r"new persona|developer mode|jailbreak|do anything now)\b",
        "prompt-extraction": r"\b(?:system prompt|your (?:hidden |initial |original )?instructions|"
        r"reveal (?:your|the) (?:prompt|instructions|configuration))\b",
        # Only horizontal blanks after ^: with MULTILINE, ^\s* would span newlines from every line start
        # (quadratic in a run of blank lines).
        "role-tags": r"(?:<\|im_start\|>|<\|system\|>|\[/?INST\]|<system>|^[ \t]*#{2,}[ \t]*(?:system|instruction)s?\b|"
        r"^[ \t]*(?:system|assistant)[ \t]*:)",
        "other-customer-data": r"\b(?:another|other|different|all|every)\s+(?:customer|user|client|account)s?'?s?"
        r"(?:\W+\w+){0,3}?\W+(?:records?|data|details|emails?|address(?:es)?|phone|card|orders?|information|info)\b|"
        r"\b(?:records?|data|details|emails?|address(?:es)?|phone numbers?|orders?|information)\s+(?:of|for|about|from)\s+"
        r"(?:another|other|a different|all|every)\s+(?:customer|user|client|account)s?\b",
        "exfiltration": r"\b(?:send|forward|email|post|upload)\b(?:\W+\w+){0,4}?\W+(?:to|at)\s+https?://",
    }.items()
}


# Disguises undone before matching: NFKC folds full-width and other compatibility letters to ASCII; format
# characters (zero-width spaces and joiners, soft hyphens, BOM) are dropped; Cyrillic and Greek letters that
# look Latin are read as the Latin letter.
_HOMOGLYPHS = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u0501\u04cf\u0410\u0412\u0415\u041a\u041c"
    "\u041d\u041e\u0420\u0421\u0422\u0425\u0406\u0408\u0405\u03bf\u03b1\u03b9\u03ba\u03bd\u03c1\u03c4"
    "\u039f\u0391\u0392\u0395\u0397\u0399\u039a\u039c\u039d\u03a1\u03a4\u03a7\u0396",
    "aeopcyxijsdlABEKMHOPCTXIJSoaikvptOABEHIKMNPTXZ",
)


def _undisguised(text: str) -> str:
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", text)
    text = "".join(char for char in text if unicodedata.category(char) != "Cf")
    return text.translate(_HOMOGLYPHS)


@dataclass(frozen=True)
class ScreenResult:
    """Which markers the screened text matched (empty: nothing suspicious)."""

    markers: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        """Whether any marker matched."""
        return bool(self.markers)

    def as_input_field(self) -> dict[str, Any]:
        """The value of ``input._screening`` for a flagged task."""
        return {"suspected_prompt_injection": True, "markers": list(self.markers)}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def screen(*values: Any) -> ScreenResult:
    """Screen every string in ``values`` (texts, JSON-like inputs) for prompt-injection markers."""
    text = _undisguised("\n".join(s for value in values for s in _strings(value))[:_MAX_SCANNED_CHARS])
    found = tuple(name for name, pattern in _MARKERS.items() if pattern.search(text))
    return ScreenResult(found)
