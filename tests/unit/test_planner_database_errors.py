"""A planner whose database is away answers UNAVAILABLE with what to do, never where the database is."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError

from agentmesh._errors import UnavailableError
from agentmesh.services.planner.engine import _db

# What psycopg says when a new connection is refused (through SQLAlchemy).
_REFUSED = 'connection failed: connection to server at "10.2.0.7", port 5433 failed: Connection refused'


async def _refused() -> None:
    raise OperationalError("SELECT 1", {}, Exception(_REFUSED))


@pytest.mark.asyncio
async def test_the_caller_learns_to_retry_and_the_log_keeps_the_driver_s_words(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agentmesh.services.planner.engine"):
        with pytest.raises(UnavailableError) as away:
            await _db(_refused())
    assert "retry" in away.value.message
    assert "10.2.0.7" not in away.value.message and "5433" not in away.value.message
    assert "10.2.0.7" in caplog.text  # the operator still sees where it tried
