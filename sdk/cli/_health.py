"""``agentmesh health``: one gRPC health check over mTLS, for container probes and operators."""

from __future__ import annotations

import argparse

_KINDS = ("service", "agent", "client")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``agentmesh health``."""
    parser.description = (
        "Ask a mesh server for its grpc.health.v1 status over mTLS and exit 0 only when it is SERVING "
        "(1 otherwise; the status is printed). Container health checks call it with the workload's own "
        "certificate, e.g. `agentmesh health localhost:7400 --as service/registry`."
    )
    parser.add_argument("address", help="server address HOST:PORT")
    parser.add_argument(
        "--as",
        dest="identity",
        default="client/ops",
        metavar="KIND/NAME",
        help="identity to call with: HOME/certs/KIND-NAME.pem, or AGENTMESH_CERT_FILE when set "
        "(default: client/ops)",
    )
    parser.add_argument("--service", default="", help="health service name to check (default: the server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default: 2)")


def run(args: argparse.Namespace) -> int:
    """Check once; print the status; 0 when SERVING."""
    import asyncio
    import sys

    from agentmesh._channel import create_channel
    from agentmesh._health import health_status
    from agentmesh._settings import Settings
    from agentmesh.cli._client import connection_failure

    kind, _, name = str(args.identity).partition("/")
    if kind not in _KINDS or not name:
        print(f"agentmesh health: --as must be KIND/NAME with KIND one of {', '.join(_KINDS)}")
        return 2
    settings = Settings.from_env()

    async def probe() -> tuple[str, str]:
        channel = create_channel(args.address, settings, kind=kind, name=name)
        try:
            return await health_status(channel, args.service, within=args.timeout)
        finally:
            await channel.close(None)

    status, details = asyncio.run(probe())
    print(status)
    if details:  # unreachable: why, on stderr (stdout stays the bare status for container probes)
        why = connection_failure(details, "server", args.address, settings) or details
        print(f"agentmesh health: {why}", file=sys.stderr)
    return 0 if status == "SERVING" else 1
