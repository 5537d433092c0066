"""``agentmesh up``: the whole mesh on one machine — dev CA, database, Triton, registry, planner,
gateway and the customer-service agents — each a child process, stopped gracefully on Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse

AGENT_MODULES = ("triage", "sentiment", "kb_search", "crm", "responder", "quality_check")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``agentmesh up``."""
    parser.add_argument(
        "--demo",
        action="store_true",
        help="after start-up, run a sample support ticket through the mesh, print its explanation, then stop",
    )
    parser.add_argument(
        "--agents",
        default=",".join(AGENT_MODULES),
        help="comma-separated agents to run (default: all customer-service agents)",
    )
    parser.add_argument(
        "--ticket", default=None, help="with --demo: id of the example ticket to run (default: the first)"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds to wait for every process to be ready"
    )


def run(args: argparse.Namespace) -> int:
    """Start everything, wait for readiness, then run the demo or serve until interrupted."""
    import asyncio

    from agentmesh.cli._mesh import LocalMesh

    agents = [name.strip() for name in args.agents.split(",") if name.strip()]
    unknown = sorted(set(agents) - set(AGENT_MODULES))
    if unknown:
        raise SystemExit(f"agentmesh up: unknown agents {unknown}; choose from {', '.join(AGENT_MODULES)}")
    if args.demo:  # an unknown --ticket is refused now, not after the whole mesh has started
        from agentmesh.cli._demo import load_ticket

        load_ticket(args.ticket)
    mesh = LocalMesh(agents=agents, startup_timeout=args.startup_timeout)
    return asyncio.run(mesh.run(demo=args.demo, ticket_id=args.ticket))
