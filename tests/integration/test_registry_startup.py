"""A replica starting on a registry of thousands of agents answers health (NOT_SERVING) while its snapshot loads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agentmesh._channel import create_channel
from agentmesh._health import check_health
from agentmesh._settings import Settings
from bench._registry_cards import Vocabulary, bulk_load, cards
from tests.fixtures.registry import FAST_REGISTRY

pytestmark = pytest.mark.postgres

AGENTS = 3000


async def test_health_answers_while_the_snapshot_loads(
    mesh_settings: Settings, issue_identity: Any, _postgres_migrated_pool: Any
) -> None:
    from agentmesh.services.registry import build_server

    issue_identity("service", "registry")
    issue_identity("client", "ops")
    with _postgres_migrated_pool.database() as url:
        await asyncio.to_thread(
            bulk_load, url, list(cards(AGENTS, vocabulary=Vocabulary.build())), lease_seconds=3600, ttl=60.0
        )
        settings = mesh_settings.replace(**FAST_REGISTRY)
        server = build_server(settings, port=0, database_url=url)
        await server.start()  # listening at once; the snapshot loads in the background
        channel = create_channel(server.address, settings, kind="client", name="ops")
        try:
            answers: list[tuple[str, float]] = []
            started = time.perf_counter()
            while time.perf_counter() - started < 120:
                asked = time.perf_counter()
                status = await check_health(channel, within=5.0)
                answers.append((status, time.perf_counter() - asked))
                if status == "SERVING":
                    break
                await asyncio.sleep(0.01)
            statuses = [status for status, _ in answers]
            assert statuses[-1] == "SERVING", statuses[-5:]
            assert "NOT_SERVING" in statuses, "the replica answered health only once loaded"
            slowest = max(took for status, took in answers if status == "NOT_SERVING")
            # Bounds a stall of the replica's event loop; loose, as the test machine is shared (the bench measures).
            assert slowest < 1.0, f"a NOT_SERVING answer took {slowest * 1000:.0f} ms while loading"
            registry = server.registry
            assert len(registry.index.instances) == AGENTS
            assert 0 < registry.load_longest_stall < 1.0
            assert registry.load_seconds > 0
        finally:
            await channel.close()
            await server.stop(grace=0.5)
