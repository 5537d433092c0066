"""What ``agentmesh registry|planner|gateway`` share: common flags and running a service until SIGTERM."""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentmesh._settings import Settings


def add_server_arguments(parser: argparse.ArgumentParser, *, default_port_setting: str) -> None:
    """Flags every service command accepts; unset flags fall back to AGENTMESH_* settings."""
    parser.add_argument(
        "--port", type=int, default=None, help=f"port to listen on (default: AGENTMESH_{default_port_setting.upper()})"
    )
    parser.add_argument("--host", default=None, help="address to bind (default: AGENTMESH_BIND_HOST, 127.0.0.1)")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (0: off)"
    )
    parser.add_argument(
        "--insecure-dev",
        action="store_true",
        help="serve plaintext without client certificates (local experiments only; logged as a warning)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    from agentmesh._settings import Settings

    overrides: dict[str, object] = {}
    if getattr(args, "host", None):
        overrides["bind_host"] = args.host
    if getattr(args, "metrics_port", None) is not None:
        overrides["metrics_port"] = args.metrics_port
    if getattr(args, "insecure_dev", False):
        overrides["insecure_dev"] = True
    return Settings.from_env(None, **overrides)


def run_service(args: argparse.Namespace, server_module: str, service_name: str) -> int:
    """Build the service in ``server_module`` (its ``build_server(settings, port=)``) and serve until SIGTERM."""
    from agentmesh import telemetry

    settings = settings_from_args(args)
    telemetry.configure_logging(settings)
    telemetry.configure_tracing(settings, service_name)
    telemetry.start_metrics_server(settings)
    module = importlib.import_module(server_module)
    server = module.build_server(settings, port=args.port)
    telemetry.run(server.serve_until_signalled())
    return 0
