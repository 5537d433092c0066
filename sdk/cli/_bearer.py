"""The interceptors that put ``authorization: Bearer <token>`` on every call to the gateway."""

from __future__ import annotations

from typing import Any

import grpc

from agentmesh._grpc_bases import UnaryStreamClientBase, UnaryUnaryClientBase

__all__ = ["bearer_interceptors"]



class _Bearer:
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under ONE kind (the first it matches), so each kind needs its own object.
class _UnaryBearer(_Bearer, UnaryUnaryClientBase):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.with_token(details), request)


class _StreamBearer(_Bearer, UnaryStreamClientBase):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.with_token(details), request)


def bearer_interceptors(token: str) -> tuple[_UnaryBearer, _StreamBearer]:
    """One interceptor per call kind the gateway serves (unary and server streaming)."""
    return _UnaryBearer(token), _StreamBearer(token)
