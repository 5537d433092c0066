"""``agentmesh agents list|get|discover|route`` against a real registry, as an operator would type them."""

from __future__ import annotations

import asyncio

import pytest

from agentmesh.cli import main
from tests.fixtures.registry import RegistryReplica, make_card


@pytest.fixture
async def populated(registry: RegistryReplica, monkeypatch: pytest.MonkeyPatch) -> RegistryReplica:
    for version, port in (("1.0.0", 9000), ("1.1.0", 9001)):
        async with registry.client("agent", "support/triage") as agent:
            await agent.register(make_card("triage", version=version, port=port, policies=("pii:allowed",)))
    monkeypatch.setenv("AGENTMESH_HOME", str(registry.settings.home))
    monkeypatch.setenv("AGENTMESH_TRUST_DOMAIN", registry.settings.trust_domain)
    monkeypatch.setenv("AGENTMESH_REGISTRY_ADDRESS", registry.address)
    monkeypatch.setenv("COLUMNS", "200")
    return registry


async def agentmesh(*argv: str) -> int:
    # The CLI runs its own event loop; keep it off the test's loop.
    return await asyncio.to_thread(main, list(argv))


async def test_operator_lists_inspects_discovers_and_routes(
    populated: RegistryReplica, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await agentmesh("agents", "list") == 0
    listed = capsys.readouterr().out
    assert "2 instance(s)" in listed and "support/triage" in listed and "1.1.0" in listed
    assert "serving instances only; --all shows the NOT_SERVING and DRAINING ones too" in listed

    assert await agentmesh("agents", "get", "support/triage", "--version", "1.0.0") == 0
    shown = capsys.readouterr().out
    assert "support/triage 1.0.0" in shown and "classify_ticket" in shown and "127.0.0.1:9000" in shown

    assert (
        await agentmesh(
            "agents", "route", "support/triage", "--weights", "1.0.0=90,1.1.0=10", "--max-error-rate", "0.2"
        )
        == 0
    )
    routed = capsys.readouterr().out
    assert "90 (90%)" in routed and "canary rollback above 20% errors" in routed

    assert (
        await agentmesh(
            "agents",
            "discover",
            "--skill",
            "classify_ticket",
            "--policy",
            "pii:allowed",
            "--routing-key",
            "t1",
        )
        == 0
    )
    discovered = capsys.readouterr().out
    assert (
        "2 matched of 2 visible" in discovered
        and "support/triage" in discovered
        and "policies hold: pii:allowed" in discovered
    )


async def test_operator_sees_a_readable_refusal(
    populated: RegistryReplica, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await agentmesh("agents", "discover", "--pattern", "support/(") == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert await agentmesh("agents", "get", "support/nobody") == 1
    assert "NOT_FOUND" in capsys.readouterr().err
