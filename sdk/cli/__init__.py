"""The ``agentmesh`` command. Each subcommand lives in its own module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from agentmesh.cli._command import Command

__all__ = ["main"]

# name -> (module, one-line help). Modules define ``configure(parser)`` and ``run(args) -> int``;
# heavy imports (grpc, sqlalchemy, ...) happen inside ``run`` so ``--help`` stays instant.
_COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("agentmesh.cli._up", "run the whole mesh on this machine (registry, planner, gateway, agents)"),
    "registry": ("agentmesh.cli._registry", "run the registry service"),
    "planner": ("agentmesh.cli._planner", "run the planner service"),
    "gateway": ("agentmesh.cli._gateway", "run the gateway service"),
    "agent": ("agentmesh.cli._agent", "run an agent"),
    "triton": ("agentmesh.cli._triton", "run the bundled Triton inference server on CPU"),
    "certs": ("agentmesh.cli._certs", "manage the mesh CA and workload certificates"),
    "token": ("agentmesh.cli._token", "mint dev access tokens for the gateway (dev JWKS under HOME)"),
    "agents": ("agentmesh.cli._agents", "list, inspect, discover and route registered agents"),
    "submit": ("agentmesh.cli._submit", "submit a task to the mesh"),
    "explain": ("agentmesh.cli._explain", "explain a task: its plan, choices and attempts"),
    "audit": ("agentmesh.cli._audit", "read and verify the audit trail"),
    "db": ("agentmesh.cli._db", "manage the database schema (Alembic migrations)"),
    "health": ("agentmesh.cli._health", "check a mesh server's gRPC health over mTLS (container probes)"),
}


# Commands that run a server until stopped: an unexpected error there keeps its traceback (the log needs it).
_SERVERS = frozenset({"up", "registry", "planner", "gateway", "agent", "triton"})


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the subcommand named in ``argv`` (if any) is imported."""
    parser = argparse.ArgumentParser(
        prog="agentmesh",
        description="Agentic Mesh: a gRPC service mesh of AI agents. "
        "Settings come from AGENTMESH_* environment variables (see README).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in _COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            command: Command = importlib.import_module(module_name)
            command.configure(sub)
            sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentmesh`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # gRPC core logs a failed TLS handshake (a wrong CA, a plain-text peer) at INFO on stderr, several lines per
    # attempt around the one-line error below; AGENTMESH servers log through Python logging anyway.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2 if args.command is None else 0
    from agentmesh._errors import MeshError

    try:
        return int(run(args) or 0)
    except MeshError as exc:  # a readable line for the operator, never a traceback
        print(f"agentmesh {args.command}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `agentmesh audit list | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 141
    except Exception as exc:
        if args.command in _SERVERS or os.environ.get("AGENTMESH_DEBUG"):
            raise
        # A client command still says what went wrong in one line; AGENTMESH_DEBUG=1 shows the traceback.
        print(f"agentmesh {args.command}: {type(exc).__name__}: {exc} (AGENTMESH_DEBUG=1 shows where)", file=sys.stderr)
        return 1
