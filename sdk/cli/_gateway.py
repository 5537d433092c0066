"""``agentmesh gateway``: run the gateway service until SIGTERM (drains in-flight calls)."""

from __future__ import annotations

import argparse

from agentmesh.cli._serve import add_server_arguments, run_service


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the gateway's flags."""
    add_server_arguments(parser, default_port_setting="gateway_port")


def run(args: argparse.Namespace) -> int:
    """Serve the gateway until SIGTERM or Ctrl-C."""
    # The CLI is the composition root: it names the service module, the SDK never imports it.
    # The console (issue 15) is served by the same process unless AGENTMESH_CONSOLE_PORT=-1; its build_server
    # builds the gateway with services.gateway.server.build_server unchanged.
    return run_service(args, "agentmesh.services.gateway.console.process", "gateway")
