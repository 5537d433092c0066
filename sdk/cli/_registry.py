"""``agentmesh registry``: run a registry replica until SIGTERM (several may share one PostgreSQL)."""

from __future__ import annotations

import argparse

from agentmesh.cli._serve import add_server_arguments, run_service


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the registry's flags."""
    add_server_arguments(parser, default_port_setting="registry_port")


def run(args: argparse.Namespace) -> int:
    """Serve the registry until SIGTERM or Ctrl-C."""
    # The CLI is the composition root: it names the service module, the SDK never imports it.
    return run_service(args, "agentmesh.services.registry.server", "registry")
