"""What the client subcommands share: the ops identity's channel and readable failures."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message

    from agentmesh._settings import Settings

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
    parser.add_argument(
        "--token",
        default=None,
        help="call through the gateway with this OAuth2 bearer token instead of a client certificate "
        "(default: AGENTMESH_TOKEN; a dev token: `agentmesh token issue`)",
    )
    parser.add_argument(
        "--gateway",
        default=None,
        help="gateway address for --token (default: localhost:AGENTMESH_GATEWAY_PORT); its certificate is "
        "checked against the mesh CA if HOME has one, else the system's roots",
    )


def call(
    args: argparse.Namespace, address_setting: str, body: Callable[[grpc.aio.Channel, Settings], Awaitable[T]]
) -> T:
    """Open an mTLS channel as ``client/<identity>`` to the service and run ``body(channel, settings)``."""
    import asyncio

    import grpc

    from agentmesh._channel import create_channel
    from agentmesh._errors import UnavailableError, from_rpc_error
    from agentmesh._settings import Settings

    settings = Settings.from_env()
    address = args.address or getattr(settings, address_setting)

    token = getattr(args, "token", None) or os.environ.get("AGENTMESH_TOKEN", "")

    gateway = getattr(args, "gateway", None) or f"localhost:{settings.gateway_port}"
    what, target = ("gateway", gateway) if token else (address_setting.removesuffix("_address"), address)
    if token:
        check_address(target, "--gateway")
    else:
        check_address(target, "--address" if args.address else f"AGENTMESH_{address_setting.upper()}")

    async def main() -> T:
        if token:  # an outside caller: TLS to the gateway, the token on every call
            channel = gateway_channel(gateway, settings, token)
        else:
            channel = create_channel(
                address, settings, kind="client", name=args.identity, server_identity=_REPLICATED.get(address_setting, "")
            )
        try:
            return await body(channel, settings)
        except grpc.aio.AioRpcError as exc:
            unreachable = connection_failure(exc.details() or "", what, target, settings)
            if unreachable is not None:
                raise UnavailableError(unreachable) from None
            raise from_rpc_error(exc) from None
        except UnavailableError as exc:  # a client (RegistryClient) that maps gRPC errors itself
            unreachable = connection_failure(exc.message, what, target, settings)
            if unreachable is not None:
                raise UnavailableError(unreachable) from None
            raise
        finally:
            await channel.close(None)

    return asyncio.run(main())


def check_address(target: str, flag: str) -> None:
    """Refuse an address gRPC would quietly bend: no port (443 is dialled), or a port past 65535 (wrapped)."""
    from agentmesh._errors import InvalidArgumentError

    for address in target.split(","):
        host, colon, port = address.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise InvalidArgumentError(
                f"{flag} {address.strip()!r} is not HOST:PORT with a port from 1 to 65535", field=flag.lstrip("-").lower()
            )


# What gRPC says when a call never reached a server: no connection, no TLS session, or no address.
_NOT_CONNECTED = ("failed to connect to all addresses", "errors resolving", "dns resolution failed")


def connection_failure(details: str, what: str, target: str, settings: Settings) -> str | None:
    """One readable line for a call that never reached the ``what`` at ``target`` (None: it did reach it).

    gRPC's own text ("failed to connect to all addresses; last error: UNKNOWN: ipv4:...: Tls handshake failed
    (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:...") is turned into the likely cause and what to do.
    """
    from agentmesh.security import ca_paths

    low = details.lower()
    if not low.startswith(_NOT_CONNECTED) and "failed to connect to all addresses" not in low:
        return None
    ca = ca_paths(settings.home)[0]
    retry = "UNAVAILABLE, retry once it is up"
    if "certificate_verify_failed" in low:
        roots = f"the mesh CA {ca}" if ca.exists() else f"the system's roots (there is no {ca})"
        why, retry = f"its TLS certificate is not signed by {roots}", "another mesh's, or a wrong AGENTMESH_HOME?"
    elif "hostname verification" in low or "peer name" in low:
        why, retry = f"the server there is not the {what} (its certificate names another)", "is the port right?"
    elif "wrong_version_number" in low:
        why, retry = "it does not speak TLS", "is it a mesh server, and the right port?"
    elif "alert" in low:
        why, retry = "it refused this client's certificate", f"is {settings.home} the home of the mesh it belongs to?"
    elif "socket closed" in low:  # TLS 1.3: a client certificate the server refuses shows as a closed socket
        why = "it closed the connection (it may not accept this client's certificate)"
        retry = f"is {settings.home} the home of the mesh it belongs to?"
    elif "handshake" in low or "ssl" in low or "tsi_" in low:
        why, retry = "the TLS handshake failed", "is it a mesh server, and the right port?"
    elif "connection refused" in low:
        why = "connection refused (is it running? `agentmesh up` starts the mesh)"
    elif "resolv" in low or "lookup" in low or "name not found" in low:
        why, retry = "the host name does not resolve", "is the address right?"
    elif "timed out" in low or "timeout" in low or "deadline" in low:
        why = "no answer in time (is the address right, and the server up?)"
    else:
        why = details.rpartition(": ")[2] or details
    return f"cannot reach the {what} at {target}: {why}; {retry}"


def print_json(message: Message, *, indent: int | None = 2) -> None:
    """Print a protobuf message as JSON (indented; ``indent=None``: on one line)."""
    from google.protobuf import json_format

    print(json_format.MessageToJson(message, indent=indent))


def gateway_channel(address: str, settings: Settings, token: str) -> grpc.aio.Channel:
    """A TLS channel to the gateway (no client certificate) that sends ``authorization: Bearer`` on every call."""
    import grpc

    from agentmesh.cli._bearer import bearer_interceptors
    from agentmesh.security import ca_paths

    ca = ca_paths(settings.home)[0]
    roots = ca.read_bytes() if ca.exists() else None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    # grpc-stubs leaves the type of a client interceptor open on purpose (_PartialStubMustCastOrIgnore).
    return grpc.aio.secure_channel(address, credentials, interceptors=bearer_interceptors(token))  # type: ignore[arg-type]
