"""Migrations on real SQLite and PostgreSQL: round trips, schema equals models, the `agentmesh db` command."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from agentmesh import storage
from agentmesh.cli import main


def _tables(url: str) -> set[str]:
    engine = storage.create_engine(url)
    try:
        with engine.connect() as connection:
            return set(sa.inspect(connection).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip(database_url: str) -> None:
    head = storage.heads()[0]
    assert storage.current(database_url) is None

    storage.upgrade(database_url)
    assert storage.current(database_url) == head
    assert _tables(database_url) == set(storage.metadata.tables) | {"alembic_version"}

    storage.downgrade(database_url, "base")
    assert storage.current(database_url) is None
    assert _tables(database_url) <= {"alembic_version"}

    storage.upgrade(database_url)
    assert storage.current(database_url) == head
    assert _tables(database_url) == set(storage.metadata.tables) | {"alembic_version"}


def test_migrated_schema_matches_the_models(migrated_database_url: str) -> None:
    engine = storage.create_engine(migrated_database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, storage.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_db_command_upgrades_reports_and_downgrades(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    head = storage.heads()[0]

    assert main(["db", "current", "--url", database_url]) == 0
    assert "not migrated" in capsys.readouterr().out

    assert main(["db", "upgrade", "--url", database_url]) == 0
    assert f"to revision {head}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--url", database_url]) == 0
    assert f"already at revision {head}" in capsys.readouterr().out

    assert main(["db", "current", "--url", database_url]) == 0
    assert f"at revision {head} (latest)" in capsys.readouterr().out

    assert main(["db", "downgrade", "--revision", "base", "--url", database_url]) == 0
    assert "to base" in capsys.readouterr().out
    assert storage.current(database_url) is None


def test_db_command_reads_the_url_from_the_environment(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTMESH_DATABASE_URL", database_url)
    assert main(["db", "upgrade"]) == 0
    assert storage.current(database_url) == storage.heads()[0]
    capsys.readouterr()


def test_db_command_never_prints_the_password(
    database_url: str, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    if make_url(database_url).get_backend_name() == "sqlite":
        # A SQLite URL has no password; use an unreachable server to see the failure path masked too.
        url = "postgresql://mesh:hunter2@127.0.0.1:1/mesh"
        assert main(["db", "current", "--url", url]) == 1
    else:
        # The test server trusts every local login, so any password is accepted and must not be shown.
        url = make_url(database_url).set(password="hunter2").render_as_string(hide_password=False)
        assert main(["db", "upgrade", "--url", url]) == 0
    captured = capsys.readouterr()
    assert "hunter2" not in captured.out + captured.err
    assert "***" in captured.out + captured.err


def test_db_command_reports_an_unknown_revision_without_a_traceback(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade", "--revision", "nope", "--url", database_url]) == 1
    err = capsys.readouterr().err
    assert "nope" in err
    assert "Traceback" not in err
