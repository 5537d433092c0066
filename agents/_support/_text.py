"""Plain text rules shared by the support agents: sentence splitting, PII detection, masking, redaction."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentmesh.audit import luhn_valid

__all__ = [
    "PiiMatch",
    "find_injection",
    "find_pii",
    "first_name",
    "mask_email",
    "mask_phone",
    "redact_pii",
    "split_sentences",
]

# Letters of any script (josé.peña@correo.es, jürgen@büro-müller.de): \w is Unicode-aware.
_EMAIL = re.compile(r"\b[\w.%+-]+@[\w.-]+\.[^\W\d_]{2,}\b")
# 13-19 digits, optionally grouped by spaces or dashes (payment card numbers); confirmed by the Luhn check.
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
# International or national phone numbers: 7+ digits with the usual separators, optional +country code.
_PHONE = re.compile(
    r"(?<![\w/])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){1,4}(?![\w/])"
)
# ISO dates and times look like grouped digits but are not personal data.
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$")
# Text addressed to an assistant rather than to support staff: attempts to override its instructions or role
# (prompt injection). A ticket carrying it is answered by a person, never by a drafted reply.
_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*(?:previous|prior|above|earlier|"
    r"preceding|system|original)\s+(?:instructions?|prompts?|rules?|messages?)\b|"
    r"\byou\s+are\s+now\s+(?:in\s+)?(?:an?\s+)?(?:admin|developer|debug|god|jailbreak|unrestricted|dan)\b|"
    r"\b(?:admin|developer|debug|god)\s+mode\b|\bsystem\s+prompt\b|\bnew\s+instructions\s*:|"
    r"\bignora\s+(?:todas\s+)?las\s+instrucciones\b|\bignoriere\s+(?:alle\s+)?(?:vorherigen\s+)?anweisungen\b|"
    r"\bignore[zr]?\s+(?:toutes\s+)?(?:les\s+)?instructions\b",
    re.I,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data found in a text."""

    kind: str  # email, phone or card
    start: int
    end: int
    text: str


def find_injection(text: str) -> str | None:
    """The first phrase of ``text`` that addresses an assistant's instructions or role (prompt injection,
    e.g. "ignore all previous instructions", "you are now in admin mode"), or None.
    """
    match = _INJECTION.search(text)
    return " ".join(match.group(0).split()) if match else None


def find_pii(text: str) -> list[PiiMatch]:
    """Emails, payment card numbers (Luhn-valid) and phone numbers (7-15 digits) in ``text``, in order."""
    found: list[PiiMatch] = [PiiMatch("email", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]
    taken = [(m.start, m.end) for m in found]

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and free(match.start(), match.end()):
            found.append(PiiMatch("card", match.start(), match.end(), match.group()))
            taken.append((match.start(), match.end()))
    for match in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        # Order numbers and dates are shorter or carry letters; 7-15 digits is the E.164 range.
        if 7 <= len(digits) <= 15 and not _DATE.match(match.group()) and free(match.start(), match.end()):
            found.append(PiiMatch("phone", match.start(), match.end(), match.group()))
            taken.append((match.start(), match.end()))
    return sorted(found, key=lambda m: m.start)


def redact_pii(text: str) -> str:
    """``text`` with every email, card and phone number replaced by ``[redacted <kind>]``."""
    for match in reversed(find_pii(text)):
        text = f"{text[: match.start]}[redacted {match.kind}]{text[match.end :]}"
    return text


def mask_email(email: str) -> str:
    """``jane.doe@example.com`` → ``j***@e***.com``: enough to recognise, not to contact."""
    local, _, domain = email.partition("@")
    if not domain:
        return "***"
    host, dot, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***{dot}{tld}" if host else f"{local[:1]}***@***"


def mask_phone(phone: str) -> str:
    """Every digit but the last two replaced by ``*`` (separators kept)."""
    digits = sum(c.isdigit() for c in phone)
    seen = 0
    masked = []
    for char in phone:
        if char.isdigit():
            seen += 1
            masked.append(char if seen > digits - 2 else "*")
        else:
            masked.append(char)
    return "".join(masked)


def first_name(name: str) -> str:
    """The first word of a full name, stripped of anything that is not part of a name."""
    for word in name.split():
        cleaned = re.sub(r"[^\w'-]", "", word)
        if cleaned and cleaned.rstrip(".").lower() not in {"mr", "mrs", "ms", "dr", "mx"}:
            return cleaned
    return ""


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after . ! ? before a capital or digit; blank lines also split)."""
    sentences: list[str] = []
    for block in re.split(r"\n\s*\n|\n(?=\s*[-*•]\s)", text):
        block = " ".join(block.split())
        if block:
            sentences.extend(s.strip() for s in _SENTENCE_END.split(block) if s.strip())
    return sentences
