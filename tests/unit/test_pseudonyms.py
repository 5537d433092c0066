"""Keyed PII pseudonyms: what the gateway's redaction leaves in place of an email, and how the CRM finds the
customer by it without the raw value being stored anywhere else."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agentmesh._errors import FailedPreconditionError
from agentmesh._settings import Settings
from agentmesh.agent import Invocation, SkillRunner
from agentmesh.agents.crm import CrmAgent
from agentmesh.audit import (
    PSEUDONYM_KEY_NAME,
    Pseudonyms,
    ensure_pseudonym_key,
    is_pseudonym,
    redact,
    redact_json,
)

KEY = b"0123456789abcdef0123456789abcdef"


def test_a_pseudonym_is_stable_keyed_and_case_insensitive_for_emails() -> None:
    pseudonyms = Pseudonyms(KEY)
    first = pseudonyms.email("Maria.Lopez@example.com")
    assert first == pseudonyms.email(" maria.lopez@EXAMPLE.com ") and is_pseudonym(first, "email")
    assert first != Pseudonyms(KEY[::-1]).email("maria.lopez@example.com")
    assert first != pseudonyms.email("tom.becker@example.com")
    assert pseudonyms.phone("+34 612 345 678") == pseudonyms.phone("+34-612-345-678")
    assert not is_pseudonym(first, "phone") and not is_pseudonym("[email]")
    assert "<secret>" in repr(pseudonyms) and "0123" not in repr(pseudonyms)
    with pytest.raises(FailedPreconditionError):
        Pseudonyms(b"short")


def test_redaction_puts_pseudonyms_for_emails_and_phones_and_markers_for_the_rest() -> None:
    pseudonyms = Pseudonyms(KEY)
    text = "Write to maria.lopez@example.com or call +34 612 345 678; card 4111 1111 1111 1111, 880 Market Street"
    redacted = redact(text, pseudonyms)
    assert redacted == (
        f"Write to {pseudonyms.email('maria.lopez@example.com')} or call {pseudonyms.phone('+34 612 345 678')}; "
        "card [card], [address]"
    )
    # Idempotent: a pseudonym has no digits or '@', so redacting again (audit, logs) leaves it as it is.
    assert redact(redacted) == redacted and redact(redacted, pseudonyms) == redacted
    ticket = {"ticket": {"email": "maria.lopez@example.com", "text": "hi"}}
    assert redact_json(ticket, pseudonyms) == {
        "ticket": {"email": pseudonyms.email("maria.lopez@example.com"), "text": "hi"}
    }
    # Without the secret, today's plain markers.
    assert redact(text) == "Write to [email] or call [phone]; card [card], [address]"


def test_the_secret_comes_from_the_configured_file_or_the_home_and_is_made_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    assert Pseudonyms.from_settings(settings) is None  # no secret: plain redaction
    key = ensure_pseudonym_key(settings.home / PSEUDONYM_KEY_NAME)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) == 64
    made = Pseudonyms.from_settings(settings)
    assert made is not None
    before = key.read_bytes()
    ensure_pseudonym_key(key)  # never replaced: every pseudonym would change
    assert key.read_bytes() == before
    mounted = tmp_path / "secret" / "pseudonym"
    mounted.parent.mkdir()
    mounted.write_bytes(KEY)
    configured = Pseudonyms.from_settings(settings.replace(pseudonym_key_file=str(mounted)))
    assert configured is not None and configured.email("a@b.co") == Pseudonyms(KEY).email("a@b.co")
    assert made.email("a@b.co") != configured.email("a@b.co")
    with pytest.raises(FailedPreconditionError, match="cannot read the pseudonym secret"):
        Pseudonyms.from_settings(settings.replace(pseudonym_key_file=str(tmp_path / "missing")))


async def test_the_crm_finds_a_customer_by_the_pseudonym_of_the_email(tmp_path: Path) -> None:
    key = tmp_path / "pseudonym.key"
    key.write_bytes(KEY)
    settings = Settings(home=tmp_path / "home", pseudonym_key_file=str(key))
    agent = CrmAgent(settings, database_url=f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}")
    await agent.startup()
    try:
        runner = SkillRunner(agent)

        async def lookup(email: str) -> dict[str, object]:
            invocation = Invocation(skill="lookup_customer", input={"email": email}, task_id="task-1")
            return (await runner.invoke(invocation)).output

        pseudonyms = Pseudonyms(KEY)
        found = await lookup(pseudonyms.email("Maria.Lopez@example.com"))
        customer = found["customer"]
        assert found["found"] and isinstance(customer, dict)
        assert customer["customer_id"] == "C-1001" and customer["name"] == "Maria Lopez" and found["masked"]
        assert (await lookup(pseudonyms.email("nobody@example.com")))["found"] is False
        assert (await lookup(Pseudonyms(KEY[::-1]).email("maria.lopez@example.com")))["found"] is False
        assert (await lookup("[email]"))["found"] is False  # plain redaction: nobody to find
    finally:
        await agent.shutdown()
