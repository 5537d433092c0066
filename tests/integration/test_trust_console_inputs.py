"""The console's JSON API answers hostile input with 400 and a readable reason, never a 500 page."""

from __future__ import annotations

import aiohttp
import pytest

from tests.integration.console_mesh import ConsoleMesh, console_mesh
from tests.integration.test_console_api import _get

__all__ = ["console_mesh"]

pytestmark = pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)


async def test_a_bad_revision_or_a_body_that_is_not_utf8_is_400_not_500(console_mesh: ConsoleMesh) -> None:
    token = console_mesh.gateway.token(["agents:read", "tasks:read", "approve"])
    for since in ("abc", "9" * 23, "-5"):
        status, _, body = await _get(console_mesh, f"/api/agents/watch?since={since}", token=token)
        assert status == 400 and "revision" in body["error"], (since, status, body)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            console_mesh.url + "/api/tasks/t1/steps/s1/approve",
            data=b"\xff\xfe{",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ssl=console_mesh.ssl_context(),
        ) as response:
            assert response.status == 400 and "JSON" in (await response.json())["error"]
