"""Settings come from AGENTMESH_* variables, typed, with defaults that need nothing installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh._settings import Settings


def test_defaults_are_local_and_embedded() -> None:
    settings = Settings.from_env({})
    assert settings.resolved_database_url == "sqlite:///.agentmesh/mesh.db"
    assert settings.trust_domain == "agentmesh.local"
    assert settings.insecure_dev is False


def test_environment_is_parsed_by_type() -> None:
    settings = Settings.from_env(
        {"AGENTMESH_REGISTRY_PORT": "9000", "AGENTMESH_INSECURE_DEV": "yes", "AGENTMESH_TRACE_SAMPLING": "0.5",
         "AGENTMESH_HOME": "/tmp/mesh", "AGENTMESH_DATABASE_URL": "postgresql+psycopg://u@h/db"}
    )
    assert settings.registry_port == 9000
    assert settings.insecure_dev is True
    assert settings.trace_sampling == 0.5
    assert settings.home == Path("/tmp/mesh")
    assert settings.resolved_database_url == "postgresql+psycopg://u@h/db"


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="AGENTMESH_REGISTRY_PORT='http'"):
        Settings.from_env({"AGENTMESH_REGISTRY_PORT": "http"})
    with pytest.raises(ValueError, match="AGENTMESH_INSECURE_DEV"):
        Settings.from_env({"AGENTMESH_INSECURE_DEV": "maybe"})


def test_overrides_win_over_environment() -> None:
    assert Settings.from_env({"AGENTMESH_PLANNER_PORT": "1"}, planner_port=2).planner_port == 2
