"""``agentmesh agent run NAME_OR_MODULE:CLASS``: serve one agent, registered with the registry, until SIGTERM."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING

from agentmesh.cli._serve import add_server_arguments, settings_from_args

if TYPE_CHECKING:
    from agentmesh.agent import Agent

SHIPPED_AGENTS = "agentmesh.agents"

_RUN_DESCRIPTION = """\
Serve an agent's AgentService (mTLS), register it with the registry, heartbeat its lease, and on
SIGTERM/Ctrl-C drain: report DRAINING, finish in-flight calls, deregister, stop.

AGENT is one of:
  NAME            a shipped agent, e.g. `triage` (the Agent class exported by agentmesh.agents.triage)
  MODULE:CLASS    any importable class, e.g. `my_company.agents.refunds:RefundAgent`
  MODULE          a module that defines exactly one Agent class

Settings come from AGENTMESH_* variables (certificates under AGENTMESH_HOME, AGENTMESH_REGISTRY_ADDRESS,
AGENTMESH_LEASE_TTL, AGENTMESH_SHUTDOWN_GRACE, ...); the flags below override them.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``agent run`` and its flags."""
    actions = parser.add_subparsers(dest="agent_action", metavar="ACTION", required=True)
    run_parser = actions.add_parser(
        "run",
        help="serve an agent until SIGTERM",
        description=_RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_parser.add_argument("agent", metavar="AGENT", help="NAME, MODULE:CLASS or MODULE (see above)")
    add_server_arguments(run_parser, default_port_setting="agent_port")
    run_parser.add_argument("--namespace", default=None, help="serve and register under this namespace instead of the card's")
    run_parser.add_argument(
        "--registry", default=None, metavar="HOST:PORT", help="registry address (default: AGENTMESH_REGISTRY_ADDRESS)"
    )
    run_parser.add_argument(
        "--no-register", action="store_true", help="serve without registering (for local testing with direct calls)"
    )


def run(args: argparse.Namespace) -> int:
    """Resolve the agent class, build it with the settings, and serve it until SIGTERM."""
    from pydantic import ValidationError

    from agentmesh.agent import AgentInfo, run_agent

    settings = settings_from_args(args)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: an agent module in the current folder imports
    try:
        agent_class = resolve_agent_class(args.agent)
        agent_class.check()
    except (ImportError, LookupError, TypeError) as exc:
        print(f"agentmesh agent run: {exc}", file=sys.stderr)
        return 2
    agent = agent_class(settings)
    if args.namespace:
        try:
            agent.card = AgentInfo.model_validate({**agent.card.model_dump(), "namespace": args.namespace})
        except ValidationError as exc:
            print(f"agentmesh agent run: --namespace {args.namespace!r}: {exc.errors()[0]['msg']}", file=sys.stderr)
            return 2
    run_agent(agent, settings=settings, port=args.port, registry_address=args.registry, register=not args.no_register)
    return 0


def resolve_agent_class(spec: str) -> type[Agent]:
    """The Agent subclass named by ``NAME``, ``MODULE:CLASS`` or ``MODULE``."""
    from agentmesh.agent import Agent

    module_name, _, class_name = spec.partition(":")
    if not module_name:
        raise LookupError(f"{spec!r} names no module")
    if "." not in module_name and not class_name:
        module_name = f"{SHIPPED_AGENTS}.{module_name.replace('-', '_')}"  # the card name works too: kb-search
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):  # the agent itself, not one of its imports
            raise LookupError(f"no agent module {module_name!r} (from {spec!r})") from None
        raise
    if class_name:
        found = getattr(module, class_name, None)
        if not (isinstance(found, type) and issubclass(found, Agent)):
            raise LookupError(f"{module_name}:{class_name} is not an Agent class")
        return found
    exported = getattr(module, "__all__", None)
    members = [getattr(module, name, None) for name in exported] if exported else list(vars(module).values())
    candidates = {
        member
        for member in members
        if isinstance(member, type)
        and issubclass(member, Agent)
        and member is not Agent
        # Without __all__, only classes defined in the module or its package (not imported bases).
        and (exported or member.__module__.startswith(module.__name__))
    }
    if len(candidates) != 1:
        names = ", ".join(sorted(c.__qualname__ for c in candidates)) or "none"
        raise LookupError(f"{module_name} must export exactly one Agent class (found: {names}); use MODULE:CLASS")
    return candidates.pop()
