"""Edges of the registry's answers: page tokens bound to their filter; `agents list` says when more exist."""

from __future__ import annotations

import json

import pytest

from agentmesh._errors import InvalidArgumentError
from tests.fixtures.registry import RegistryReplica, make_card
from tests.integration.test_registry_cli import agentmesh, populated  # noqa: F401  (a fixture)


async def test_a_page_token_reused_with_another_filter_is_refused(registry: RegistryReplica) -> None:
    for index in range(3):
        async with registry.client("agent", f"support/worker-{index}") as agent:
            card = make_card(f"worker-{index}")
            card.spiffe_id = f"spiffe://agentmesh.test/agent/support/worker-{index}"
            await agent.register(card)
    async with registry.client("client", "ops") as ops:
        token = (await ops.list_agents(page_size=2)).next_page_token
        assert token
        assert len((await ops.list_agents(page_size=2, page_token=token)).instances) == 1
        for other in ({"name_prefix": "worker-1"}, {"namespace": "support"}, {"include_not_serving": True}):
            with pytest.raises(InvalidArgumentError, match="another filter") as refused:
                await ops.list_agents(page_size=2, page_token=token, **other)  # type: ignore[arg-type]
            assert refused.value.field == "page_token"


@pytest.mark.usefixtures("populated")
async def test_agents_list_says_when_more_exist_and_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert await agentmesh("agents", "list", "--limit", "1") == 0
    out = capsys.readouterr().out
    assert "1 instance(s)" in out and "more instances exist than the 1 shown" in out

    assert await agentmesh("agents", "list", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert {json.loads(line)["card"]["version"] for line in lines} == {"1.0.0", "1.1.0"}

    assert await agentmesh("agents", "list", "--json", "--limit", "1") == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and "more instances exist" in captured.err
