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

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agentmesh._channel import create_channel
    from agentmesh._settings import Settings
    from agentmesh.cli._client import connection_failure

    kind, _, name = str(args.identity).partition("/")
    if kind not in _KINDS or not name:
        print(f"agentmesh health: --as must be KIND/NAME with KIND one of {', '.join(_KINDS)}")
        return 2
    settings = Settings.from_env()

    why = ""

    async def probe() -> str:
        nonlocal why
        channel = create_channel(args.address, settings, kind=kind, name=name)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.aio.AioRpcError as exc:  # the same statuses as agentmesh._health.check_health, and why
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            details = exc.details() or exc.code().name
            why = connection_failure(details, "server", args.address, settings) or details
            return "UNREACHABLE"
        finally:
            await channel.close(None)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    status = asyncio.run(probe())
    print(status)
    if why:
        print(f"agentmesh health: {why}", file=sys.stderr)
    return 0 if status == "SERVING" else 1
