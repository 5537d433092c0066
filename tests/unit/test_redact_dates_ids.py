"""Redaction keeps what only looks like a phone number: a date followed by a time (every certificate line of
the gateway's log read "valid until [phone]:55:28 UTC"; a ticket's "delivered 2026-11-16 10:30" lost its date)
and the all-digit last group of a UUID (an order id in a task's input came out as "...-a716-[phone]").
A real number next to them is still redacted."""

from __future__ import annotations

import logging

import pytest

from agentmesh.audit import Pseudonyms, RedactingFilter, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("valid until 2026-12-05 15:55:28 UTC", "valid until 2026-12-05 15:55:28 UTC"),
        ("delivered 2026-11-16 10:30, still broken", "delivered 2026-11-16 10:30, still broken"),
        ("order 550e8400-e29b-41d4-a716-446655440000 is late", "order 550e8400-e29b-41d4-a716-446655440000 is late"),
        ("ref A-612345678", "ref A-612345678"),
        ("on 2026-12-04 call 612 345 678", "on 2026-12-04 call [phone]"),
        ("since 2026-12-04, call +34 612 345 678", "since 2026-12-04, call [phone]"),
    ],
)
def test_dates_and_identifiers_are_not_phone_numbers(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_log_line_keeps_its_date_and_time(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redact.dates")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("loaded its certificate, valid until %s", "2026-12-05 15:55:28 UTC")
    assert caplog.records[0].getMessage() == "loaded its certificate, valid until 2026-12-05 15:55:28 UTC"


def test_a_phone_after_a_date_gets_its_pseudonym() -> None:
    pseudonyms = Pseudonyms(b"k" * 32)
    redacted = redact("2026-12-04 +34 612 345 678", pseudonyms)
    assert redacted.startswith("2026-12-04 ") and "612" not in redacted
