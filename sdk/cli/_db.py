"""``agentmesh db``: migrate the database schema (Alembic migrations shipped inside the package)."""

from __future__ import annotations

import argparse
import sys

_DESCRIPTION = """\
Manage the schema of the mesh database with the Alembic migrations shipped in agentmesh.storage.

The database is AGENTMESH_DATABASE_URL (e.g. postgresql://user:pass@host/mesh), or SQLite at
$AGENTMESH_HOME/mesh.db (default .agentmesh/mesh.db) when unset; --url overrides both.

  agentmesh db upgrade                 migrate to the latest schema (safe to repeat)
  agentmesh db downgrade --revision R  migrate down to revision R ("base" drops every table)
  agentmesh db current                 show the revision the database is at
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``db`` actions and their options."""
    parser.description = _DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--url",
            default=None,
            help="database URL (default: AGENTMESH_DATABASE_URL, else sqlite:///$AGENTMESH_HOME/mesh.db)",
        )
        return sub

    upgrade = add("upgrade", "migrate the schema up to a revision (default: the latest, 'head')")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    downgrade = add("downgrade", "migrate the schema down to a revision; later changes are undone")
    downgrade.add_argument(
        "--revision", required=True, help="target revision, e.g. 0001, or 'base' to drop every table"
    )
    add("current", "print the revision the database is at and whether it is the latest")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; exit code 0 on success, 1 when the database cannot be migrated or read."""
    from sqlalchemy.exc import SQLAlchemyError

    from agentmesh import storage

    try:
        url = storage.sync_url(args.url)
    except Exception as exc:  # an unparseable URL: say so without a traceback
        print(f"agentmesh db: bad database URL: {exc}", file=sys.stderr)
        return 2
    shown = storage.mask_url(url)
    try:
        if args.db_action == "upgrade":
            before = storage.current(url)
            storage.upgrade(url, args.revision)
            after = storage.current(url)
            verb = "already at" if before == after else f"upgraded from {before or 'an empty database'} to"
            print(f"{shown}: {verb} revision {after}")
        elif args.db_action == "downgrade":
            before = storage.current(url)
            storage.downgrade(url, args.revision)
            after = storage.current(url)
            print(
                f"{shown}: downgraded from {before or 'an empty database'} to {after or 'base (no tables)'}"
            )
        else:
            revision = storage.current(url)
            heads = storage.heads()
            if revision is None:
                print(f"{shown}: not migrated; run `agentmesh db upgrade`")
            elif revision in heads:
                print(f"{shown}: at revision {revision} (latest)")
            else:
                print(
                    f"{shown}: at revision {revision}, latest is {', '.join(heads)}; run `agentmesh db upgrade`"
                )
    except (SQLAlchemyError, OSError) as exc:
        message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"agentmesh db {args.db_action}: {shown}: {message}", file=sys.stderr)
        return 1
    except Exception as exc:  # Alembic reports unknown revisions as CommandError/ResolutionError
        print(f"agentmesh db {args.db_action}: {shown}: {exc}", file=sys.stderr)
        return 1
    return 0
