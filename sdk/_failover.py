"""Reaching a replicated service: several addresses, one channel, the server verified by its identity.

A replicated service (the registry, the planner) is named by a comma-separated list of ``host:port``
addresses, or by one DNS name that resolves to many. :func:`replica_target` turns either into one gRPC
target; gRPC's ``pick_first`` policy keeps a single connection and, when that replica goes away, connects
to the next live address on the next call (a refused or reset connection moves on at once). The channel
verifies the server's certificate against the host name the mesh CA derives from its SPIFFE id
(:attr:`agentmesh.security.SpiffeId.hostname`, e.g. ``registry.service.<td>``), not against the address
dialled, so every replica address passes and only the named identity does. See ``create_channel``'s
``server_identity`` argument; this module holds the pieces.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from agentmesh._errors import InvalidArgumentError
from agentmesh._settings import Settings
from agentmesh.security import SpiffeId

__all__ = ["replica_options", "replica_target", "split_addresses"]

# Reconnect quickly: a replica that is back (or the next one in the list) is tried within ~0.1-1 s.
_RECONNECT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.lb_policy_name", "pick_first"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def split_addresses(addresses: str) -> tuple[str, ...]:
    """The ``host:port`` entries of a comma-separated address list (blanks dropped)."""
    entries = tuple(entry.strip() for entry in addresses.split(","))
    found = tuple(entry for entry in entries if entry)
    if not found:
        raise InvalidArgumentError(f"no address in {addresses!r}; expected host:port[,host:port...]")
    return found


def _host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidArgumentError(f"address {address!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), port


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def replica_target(addresses: str) -> str:
    """One gRPC target for ``addresses``: a single address as given, several as a static address list.

    A single name goes to gRPC's DNS resolver, which returns every address the name has, IPv4 and IPv6 (A and
    AAAA records; re-resolved when connections fail); ``dns://<server>/<name>:<port>`` asks a given DNS server.
    Several addresses that are all IP literals become an ``ipv4:``/``ipv6:`` list; host names among several are
    resolved here, once. A gRPC address list holds one family, so a list mixing IPv4 and IPv6 keeps the IPv4
    addresses only: to mix families, give one DNS name.
    """
    entries = split_addresses(addresses)
    if len(entries) == 1:
        return entries[0]
    resolved: list[tuple[int, str, str]] = []  # (ip version, ip, port)
    for entry in entries:
        host, port = _host_port(entry)
        version = _ip_version(host)
        if version is not None:
            resolved.append((version, host, port))
            continue
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise InvalidArgumentError(f"cannot resolve {host!r} in {addresses!r}: {exc.strerror}") from None
        for family, _, _, _, sockaddr in infos:
            resolved.append((6 if family == socket.AF_INET6 else 4, str(sockaddr[0]), port))
    # One scheme per target: IPv4 when there is any, else IPv6 (order kept, duplicates dropped).
    version = 4 if any(v == 4 for v, _, _ in resolved) else 6
    seen: dict[str, None] = {}
    for v, ip, port in resolved:
        if v == version:
            seen[f"{ip}:{port}" if v == 4 else f"[{ip}]:{port}"] = None
    return f"ipv{version}:{','.join(seen)}"


def replica_options(settings: Settings, server_identity: str) -> Sequence[tuple[str, Any]]:
    """Channel options for a replicated service ``server_identity`` (``kind/name``, e.g. ``service/registry``).

    The TLS check uses the identity's host name instead of the dialled address, and reconnects are fast.
    """
    kind, sep, name = server_identity.partition("/")
    if not sep:
        raise InvalidArgumentError(f"server identity {server_identity!r} is not kind/name")
    hostname = SpiffeId(settings.trust_domain, kind, name).hostname
    options = list(_RECONNECT_OPTIONS)
    if not settings.insecure_dev:
        options.append(("grpc.ssl_target_name_override", hostname))
    return options
