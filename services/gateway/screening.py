"""An input screen for prompt-injection markers: text that tries to give the mesh's models instructions.

It flags, it does not understand: a match means "treat this ticket's instructions as data", and by policy
(``AGENTMESH_GATEWAY_INJECTION_POLICY=reject``) the gateway refuses the request instead. A flagged task
carries ``input._screening = {"suspected_prompt_injection": true, "markers": [...]}`` so the responder and
quality_check can see it. Patterns are plain alternations without nested quantifiers (linear time).
"""

from __future__ import annotations

import re
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
    text = "\n".join(s for value in values for s in _strings(value))[:_MAX_SCANNED_CHARS]
    found = tuple(name for name, pattern in _MARKERS.items() if pattern.search(text))
    return ScreenResult(found)
