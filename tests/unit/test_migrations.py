"""The packaged migrations and the URL helpers, without a database server."""

from __future__ import annotations

import pytest

from agentmesh import storage
from agentmesh.cli import main


def test_there_is_exactly_one_migration_head() -> None:
    assert len(storage.heads()) == 1


def test_migrations_ship_inside_the_package() -> None:
    folder = storage.alembic_config().get_main_option("script_location")
    assert folder is not None
    assert folder.endswith("agentmesh/storage/migrations") or folder.endswith("sdk/storage/migrations")


@pytest.mark.parametrize(
    ("given", "sync", "async_"),
    [
        ("sqlite:///x/mesh.db", "sqlite:///x/mesh.db", "sqlite+aiosqlite:///x/mesh.db"),
        ("postgresql://u@h:5/db", "postgresql+psycopg://u@h:5/db", "postgresql+psycopg://u@h:5/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_urls_get_the_driver_each_side_needs(given: str, sync: str, async_: str) -> None:
    assert storage.sync_url(given).render_as_string() == sync
    assert storage.async_url(given).render_as_string() == async_


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql+asyncpg://u@h/db"])
def test_unsupported_databases_are_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        storage.sync_url(url)


def test_default_url_is_sqlite_under_the_home_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTMESH_DATABASE_URL", raising=False)
    monkeypatch.setenv("AGENTMESH_HOME", "/srv/mesh")
    assert storage.default_url() == "sqlite:////srv/mesh/mesh.db"
    monkeypatch.setenv("AGENTMESH_DATABASE_URL", "postgresql://mesh@db/mesh")
    assert storage.sync_url().render_as_string() == "postgresql+psycopg://mesh@db/mesh"


def test_passwords_are_masked() -> None:
    masked = storage.mask_url("postgresql://mesh:hunter2@db:5432/mesh")
    assert "hunter2" not in masked
    assert masked == "postgresql://mesh:***@db:5432/mesh"


def test_db_help_explains_each_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["db", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for action in ("upgrade", "downgrade", "current", "AGENTMESH_DATABASE_URL"):
        assert action in out


def test_db_downgrade_needs_a_revision(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["db", "downgrade"])
    assert exited.value.code == 2
    assert "--revision" in capsys.readouterr().err
