"""PII redaction: emails, phone numbers, card numbers and street addresses, before anything is stored or logged.

Redaction lives here, in ``agentmesh``, so every service applies the same rules (the gateway to what it
forwards, the audit trail to what it records, :class:`RedactingFilter` to log records); agents never have to.
Each kind of value becomes a fixed marker (``[email]``, ``[phone]``, ``[card]``, ``[address]``), so a reader
still sees *that* something was there; given the mesh's :class:`Pseudonyms`, emails and phone numbers become
keyed pseudonyms instead (``[email:kpbf...]``), which a holder of the secret can match but nobody can reverse. Patterns are plain ``re`` with no nested quantifiers (linear here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

from agentmesh.audit._pseudonyms import Pseudonyms

__all__ = [
    "PII_MARKERS",
    "RedactingFilter",
    "contains_pii",
    "install_log_redaction",
    "luhn_valid",
    "redact",
    "redact_json",
]

EMAIL_MARKER = "[email]"
PHONE_MARKER = "[phone]"
CARD_MARKER = "[card]"
ADDRESS_MARKER = "[address]"
PII_MARKERS = (ADDRESS_MARKER, CARD_MARKER, EMAIL_MARKER, PHONE_MARKER)

# Letters and digits of any script (\w): internationalised addresses (josé@, @exämple.de) are addresses too.
_EMAIL = re.compile(r"[\w.%+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){0,8}\.[^\W\d_]{2,24}")
# 13-19 digits, optionally grouped by single spaces or dashes; kept only when the Luhn check passes. Not part
# of a decimal number (digit.digit), but a full stop ending the sentence or opening it ("no.4111...") is fine.
_CARD = re.compile(r"(?<!\d)(?<!\d\.)\d(?:[ -]?\d){12,18}(?!\d|\.\d)")
# International (+CC ...) or grouped national numbers; the digit count is checked in _phone().
# Not the rest of a dashed identifier (the all-digit last group of a UUID, "ID-123456789").
_PHONE = re.compile(r"(?<![\w+])(?<!\w-)(?:\+\d{1,3}|\(\d{1,5}\)|\d{2,5})(?:[ .-]?\(?\d{1,5}\)?){1,5}(?![\w])")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_STREET_SUFFIX = (
    r"Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?|Court|Ct\.?|Way|"
    r"Place|Pl\.?|Terrace|Square|Sq\.?|Parkway|Pkwy\.?|Highway|Hwy\.?"
)
_ADDRESS = re.compile(
    "|".join(
        (
            # 880 Market Street, 14 Elm Road (optionally ", Apt 4")
            rf"\b\d{{1,5}}[A-Za-z]?(?: [A-Z][\w'-]{{0,30}}){{1,4}} (?:{_STREET_SUFFIX})\b(?:,? (?:Apt|Suite|Unit)\.? ?\w{{1,6}})?",
            # Lindenstrasse 5, Keizersgracht 220, Hauptstraße 12a
            r"\b[A-Z][\w-]{0,40}(?:stra(?:ss|ß)e|str\.|weg|gasse|platz|allee|gracht|laan|straat|plein|kade|vej|gade|gatan|vägen)"
            r" \d{1,5}[a-zA-Z]?\b",
            # Calle Mayor 12, 3B; Via Garibaldi 8; Rue de la Paix 3
            r"\b(?:Calle|Carrer|Via|Viale|Piazza|Rue|Avenida|Rua|Plaza|Paseo)(?: [\w'-]{1,30}){1,4} \d{1,5}[a-zA-Z]?\b"
            r"(?:, ?\d{1,3}[A-Za-z]?\b)?",
        )
    )
)


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (how card numbers are told from other numbers)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return CARD_MARKER if luhn_valid(digits) else match.group()


def _phone(match: re.Match[str], pseudonyms: Pseudonyms | None = None) -> str:
    text = match.group()
    date = _ISO_DATE.match(text)
    if date is not None and date.end() < len(text):
        # A date and what follows it ("2026-12-05 15:55:28", a log line's time): the date is no phone number;
        # a number after it may be.
        rest = text[date.end() :]
        return text[: date.end()] + _PHONE.sub(partial(_phone, pseudonyms=pseudonyms), rest)
    digits = sum(char.isdigit() for char in text)
    international = text.startswith("+")
    # Plain grouped numbers need more digits than "+CC" ones, so dates, amounts and order ids survive.
    if (international and 7 <= digits <= 15) or (not international and 9 <= digits <= 15):
        if not _ISO_DATE.fullmatch(text):
            return pseudonyms.phone(text) if pseudonyms is not None else PHONE_MARKER
    return text


def redact(text: str, pseudonyms: Pseudonyms | None = None) -> str:
    """``text`` with every email, card number, phone number and street address replaced by a marker (emails
    and phone numbers by their keyed pseudonyms when ``pseudonyms`` is given)."""
    if not text:
        return text
    text = _EMAIL.sub(EMAIL_MARKER if pseudonyms is None else lambda m: pseudonyms.email(m.group()), text)
    text = _CARD.sub(_card, text)
    text = _ADDRESS.sub(ADDRESS_MARKER, text)
    return _PHONE.sub(_phone if pseudonyms is None else partial(_phone, pseudonyms=pseudonyms), text)


def redact_json(value: Any, pseudonyms: Pseudonyms | None = None) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with every string redacted; keys too."""
    if isinstance(value, str):
        return redact(value, pseudonyms)
    if isinstance(value, Mapping):
        return {redact(str(key), pseudonyms): redact_json(item, pseudonyms) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(item, pseudonyms) for item in value]
    return value


def contains_pii(value: Any) -> bool:
    """Whether redacting ``value`` would change it (a cheap test for logs and assertions)."""
    return bool(redact_json(value) != value)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (and drops its arguments) of every record.

    Install it on a handler (``handler.addFilter(RedactingFilter())``) so PII never reaches a log sink.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        # A traceback repeats the exception's message (often the offending input): formatters print a set
        # exc_text instead of formatting exc_info again, so the redacted text is what reaches the sink.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger), once.

    Call it after logging is configured; services that handle outside input (gateway, planner) do.
    """
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
