"""``agentmesh planner``: run the planner service until SIGTERM (drains in-flight calls)."""

from __future__ import annotations

import argparse

from agentmesh.cli._serve import add_server_arguments, run_service


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the planner's flags."""
    add_server_arguments(parser, default_port_setting="planner_port")


def run(args: argparse.Namespace) -> int:
    """Serve the planner until SIGTERM or Ctrl-C."""
    # The CLI is the composition root: it names the service module, the SDK never imports it.
    return run_service(args, "agentmesh.services.planner.server", "planner")
