"""What an outside caller is told when the planner or the registry behind the gateway fails a forwarded call."""

from __future__ import annotations

import logging

import grpc

from agentmesh._errors import (
    DeadlineExceededError,
    InternalError,
    MeshError,
    UnavailableError,
    from_rpc_error,
)

__all__ = ["public_error"]

logger = logging.getLogger(__name__)

# An upstream's own failures: their messages name internal addresses, ports, database hosts and errors, which
# an outside caller must not see (the gateway's log has them). Answers about the request itself pass through.
_UPSTREAM_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)
_RETRY_HINT = 2.0  # seconds an outside caller is told to wait when the upstream gave no better figure


def public_error(exc: grpc.RpcError, upstream: str) -> MeshError:
    """What an outside caller is told of a failed upstream call: the same error for answers about the request;
    for the upstream's own failures (down, slow, broken) the same status with a message that names no internal
    address, and for UNAVAILABLE a retry hint (also as ``google.rpc.RetryInfo``)."""
    error = from_rpc_error(exc)
    if error.code not in _UPSTREAM_FAILURES:
        return error
    logger.warning("the %s failed a forwarded call: %s %s", upstream, error.code.name, error.message)
    if error.code is grpc.StatusCode.UNAVAILABLE:
        wait = _retry_after(error) or _RETRY_HINT
        wait = float(max(1, round(wait)))
        return UnavailableError(
            f"the {upstream} is unavailable right now; retry in {wait:.0f}s", retry_after=wait
        )
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(f"the {upstream} did not answer within the deadline; retry later")
    return InternalError(f"internal error in the {upstream}; its log has the details")


def _retry_after(error: MeshError) -> float | None:
    """The upstream's own hint: its RetryInfo, or an open circuit's ``retry_after`` metadata."""
    if isinstance(error, UnavailableError) and error.retry_after:
        return error.retry_after
    try:
        return float(error.metadata["retry_after"])
    except (KeyError, ValueError):
        return None
