"""Edges of the registry's answers: page tokens are bound to their listing's filter."""

from __future__ import annotations

import pytest

from agentmesh._errors import InvalidArgumentError
from tests.fixtures.registry import RegistryReplica, make_card


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
