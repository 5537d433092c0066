"""Redaction and the audit chain's canonical form, without a database."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

import pytest

from agentmesh.audit import (
    GENESIS_HASH,
    RedactingFilter,
    canonical_record,
    contains_pii,
    record_hash,
    redact,
    redact_json,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to maria.lopez@example.com today", "write to [email] today"),
        ("escribe a jos\u00e9.pe\u00f1a@correo.es o an j\u00fcrgen@b\u00fcro-m\u00fcller.de", "escribe a [email] o an [email]"),
        ("card 4111 1111 1111 1111 and 4111-1111-1111-1111", "card [card] and [card]"),
        ("My card is 4111 1111 1111 1111.", "My card is [card]."),
        ("card no.4111111111111111, exp 12/29", "card no.[card], exp 12/29"),
        ("call +34 612 345 678 or +1 415 555 0142", "call [phone] or [phone]"),
        ("or (415) 555-0142, or 030 1234 5678", "or [phone], or [phone]"),
        ("I live at 880 Market Street, Apt 4 in SF", "I live at [address] in SF"),
        ("Lindenstrasse 5; Keizersgracht 220; Calle Mayor 12, 3B; Via Garibaldi 8", "[address]; [address]; [address]; [address]"),
    ],
)
def test_pii_is_replaced_by_markers(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_ordinary_numbers_survive_redaction() -> None:
    text = "order NW-10482 of 2026-12-03 cost 89.99 EUR (qty 3, ref 1234567); card 4111 1111 1111 1112 is not Luhn-valid"
    assert redact(text) == text


def test_json_values_and_keys_are_redacted() -> None:
    value = {"customer": {"email": "a.b@example.org", "notes": ["call +44 7700 900123"]}, "n": 3}
    assert redact_json(value) == {"customer": {"email": "[email]", "notes": ["call [phone]"]}, "n": 3}
    assert contains_pii(value) and not contains_pii(redact_json(value))


def test_the_logging_filter_redacts_formatted_messages(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("lookup of %s failed", "someone@example.com")
    assert "someone@example.com" not in caplog.text and "lookup of [email] failed" in caplog.text


def test_the_logging_filter_redacts_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        try:
            raise ValueError("no customer with email someone@example.com and card 4111 1111 1111 1111")
        except ValueError:
            logger.exception("unhandled error in %s", "/agentmesh.v1.TaskService/SubmitTask")
    assert "ValueError: no customer with email [email] and card [card]" in caplog.text
    assert "someone@example.com" not in caplog.text and "4111 1111" not in caplog.text


def test_the_record_hash_is_sha256_of_rfc8785_json_any_language_can_recompute() -> None:
    fields = {
        "sequence": 1,
        "record_time": dt.datetime(2026, 12, 3, 17, 0, 0, 123456, tzinfo=dt.UTC),
        "actor": "spiffe://agentmesh.local/service/gateway",
        "on_behalf_of": "acme/alice",
        "action": "/agentmesh.v1.TaskService/SubmitTask",
        "resource": "tasks/t1",
        "outcome": "OK",
        "detail": {"tenant": "acme", "b": 1.0, "a": "é"},
        "trace_id": "",
        "model_name": "",
        "model_version": "",
        "previous_hash": GENESIS_HASH,
    }
    expected = (
        '{"action":"/agentmesh.v1.TaskService/SubmitTask","actor":"spiffe://agentmesh.local/service/gateway",'
        '"detail":{"a":"é","b":1,"tenant":"acme"},"model_name":"","model_version":"","on_behalf_of":"acme/alice",'
        '"outcome":"OK","previous_hash":"' + "0" * 64 + '","record_time":"2026-12-03T17:00:00.123456Z",'
        '"resource":"tasks/t1","sequence":1,"trace_id":""}'
    ).encode()
    assert canonical_record(**fields) == expected
    assert record_hash(**fields) == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize(
    "detail",
    [
        {},
        {"tenant": "acme", "n": 1.5, "nested": {"z": [1, "two", None]}},
        # The stand-ins the database's half of the hash is cut at, as a caller's own detail keys and values.
        {"previous_hash": "p" * 64, "sequence": 2**53 - 1, "deep": [{"sequence": 9007199254740991}]},
        {"text": '"previous_hash":"' + "p" * 64 + '","sequence":9007199254740991'},
    ],
)
def test_the_parts_the_database_hashes_rebuild_the_canonical_record_exactly(detail: dict[str, object]) -> None:
    from agentmesh.audit._chain import canonical_parts

    fields = {
        "record_time": dt.datetime(2026, 12, 4, 21, 0, 0, 5, tzinfo=dt.UTC),
        "actor": 'spiffe://agentmesh.local/service/"previous_hash":"planner',
        "on_behalf_of": "acme/alice",
        "action": "step.attempt",
        "resource": "tasks/t1/steps/s",
        "outcome": "OK",
        "detail": detail,
        "trace_id": "0" * 32,
        "model_name": "minilm",
        "model_version": "1",
    }
    before, between, after = canonical_parts(**fields)
    for sequence, previous in ((1, GENESIS_HASH), (987_654, "ab" * 32)):
        rebuilt = before + previous.encode() + between + str(sequence).encode() + after
        assert rebuilt == canonical_record(sequence=sequence, previous_hash=previous, **fields)
