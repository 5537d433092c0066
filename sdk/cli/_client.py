"""What the client subcommands share: the ops identity's channel and readable failures."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Replicated services: their address setting may list several replicas, each verified as this identity.
_REPLICATED = {"registry_address": "service/registry", "planner_address": "service/planner"}


def add_client_arguments(parser: argparse.ArgumentParser, *, default_address_setting: str) -> None:
    """Flags of a subcommand that calls a mesh service as an ops client."""
    parser.add_argument(
        "--address",
        default=None,
        help=f"service address host:port, or several comma-separated replicas "
        f"(default: AGENTMESH_{default_address_setting.upper()})",
    )
    parser.add_argument(
        "--identity",
        default="ops",
        help="client identity NAME: uses HOME/certs/client-NAME.pem (default: ops)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw reply as JSON")


def call(args: argparse.Namespace, address_setting: str, body: Callable[..., Awaitable[T]]) -> T:
    """Open an mTLS channel as ``client/<identity>`` to the service and run ``body(channel, settings)``."""
    import asyncio

    import grpc

    from agentmesh._channel import create_channel
    from agentmesh._errors import from_rpc_error
    from agentmesh._settings import Settings

    settings = Settings.from_env()
    address = args.address or getattr(settings, address_setting)

    async def main() -> T:
        channel = create_channel(
            address, settings, kind="client", name=args.identity, server_identity=_REPLICATED.get(address_setting, "")
        )
        try:
            return await body(channel, settings)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            await channel.close()

    return asyncio.run(main())


def print_json(message: object) -> None:
    """Print a protobuf message as indented JSON."""
    from google.protobuf import json_format

    print(json_format.MessageToJson(message))  # type: ignore[arg-type]
