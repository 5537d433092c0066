"""One exception tree for the whole mesh, each class mapped to one gRPC status code.

Domain code raises these; the server interceptor (``agentmesh._server``) turns them into a gRPC status with a
``google.rpc.ErrorInfo`` detail (and ``BadRequest`` for invalid fields). Clients turn a failed call back into
the same class with :func:`from_rpc_error`, so code on both sides catches ``NotFoundError``, not status codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, Unpack

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "agentmesh.dev"
# A status travels in trailers (the message percent-encoded in grpc-message, again in grpc-status-details-bin),
# and a gRPC client drops trailers over 8-16 KB, answering RESOURCE_EXHAUSTED "Stream removed" instead of the
# real status. Messages that quote a caller's input (an id of a megabyte) are cut to these UTF-8 sizes.
MAX_MESSAGE_BYTES = 1024
MAX_METADATA_BYTES = 256
_MAX_METADATA_ENTRIES = 16


class _Options(TypedDict, total=False):
    """The keyword arguments every MeshError takes (subclasses pass them on)."""

    reason: str | None
    metadata: Mapping[str, str] | None


class MeshError(Exception):
    """Base of every error the mesh reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def to_status(self) -> grpc.Status:
        """The gRPC status (code, message, ErrorInfo detail) a server sends for this error."""
        metadata = {
            _bounded(key, MAX_METADATA_BYTES): _bounded(value, MAX_METADATA_BYTES)
            for key, value in list(self.metadata.items())[:_MAX_METADATA_ENTRIES]
        }
        info = error_details_pb2.ErrorInfo(
            reason=_bounded(self.reason, MAX_METADATA_BYTES), domain=ERROR_DOMAIN, metadata=metadata
        )
        details = [_pack(info), *self._extra_details()]
        message = _bounded(self.message, MAX_MESSAGE_BYTES)
        proto = status_pb2.Status(code=self.code.value[0], message=message, details=details)
        return rpc_status.to_status(proto)

    def _extra_details(self) -> list[any_pb2.Any]:
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgumentError(MeshError):
    """The request is malformed; ``field`` names the offending field (dotted path)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, field: str = "", **kwargs: Unpack[_Options]) -> None:
        super().__init__(message, **kwargs)
        self.field = field
        if field:
            self.metadata.setdefault("field", field)

    def _extra_details(self) -> list[any_pb2.Any]:
        if not self.field:
            return []
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_bounded(self.field, MAX_METADATA_BYTES), description=_bounded(self.message, MAX_MESSAGE_BYTES)
        )
        return [_pack(error_details_pb2.BadRequest(field_violations=[violation]))]


class NotFoundError(MeshError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExistsError(MeshError):
    """A resource with that identity already exists and differs."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class AbortedError(MeshError):
    """A concurrent change won (e.g. a stale ``expected_version``); re-read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class FailedPreconditionError(MeshError):
    """The system is not in a state that allows the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDeniedError(MeshError):
    """The caller's identity is not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class UnauthenticatedError(MeshError):
    """The caller has no valid identity (certificate or token)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhaustedError(MeshError):
    """A quota or rate limit was hit; ``retry_after`` (seconds) tells when to try again, if known."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Unpack[_Options]) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    def _extra_details(self) -> list[any_pb2.Any]:
        return _retry_info(self.retry_after)


class UnavailableError(MeshError):
    """A dependency (database, agent, Triton) cannot be reached; safe to retry later.

    ``retry_after`` (seconds), when known, is sent as ``google.rpc.RetryInfo``."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Unpack[_Options]) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    def _extra_details(self) -> list[any_pb2.Any]:
        return _retry_info(self.retry_after)


class DeadlineExceededError(MeshError):
    """The call's deadline passed before it finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class InternalError(MeshError):
    """A bug or broken invariant on the server; details are logged, never sent."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


class UnimplementedError(MeshError):
    """The RPC exists in the contract but this server does not serve it yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        AbortedError,
        FailedPreconditionError,
        PermissionDeniedError,
        UnauthenticatedError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        InternalError,
        UnimplementedError,
    )
}


def from_rpc_error(error: grpc.RpcError) -> MeshError:
    """Turn a failed call's status back into the matching :class:`MeshError` subclass."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    # Another process's words, kept and shown by this one: a NUL in them (no PostgreSQL text column holds one) is
    # replaced, so an agent's error message cannot make the step that records it unwritable.
    message = message.replace("\x00", "\ufffd")
    cls = _BY_CODE.get(code, MeshError)
    reason: str | None = None
    metadata: dict[str, str] = {}
    field = ""
    retry_after: float | None = None
    # grpc.aio errors are not grpc.Call instances but carry the same trailing metadata (with the details).
    # grpc_status types from_call for grpc.Call only.
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field if bad.field_violations else ""
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    if cls is InvalidArgumentError:
        result: MeshError = InvalidArgumentError(message, field=field, reason=reason, metadata=metadata)
    elif cls is ResourceExhaustedError:
        result = ResourceExhaustedError(message, retry_after=retry_after, reason=reason, metadata=metadata)
    elif cls is UnavailableError:
        result = UnavailableError(message, retry_after=retry_after, reason=reason, metadata=metadata)
    else:
        result = cls(message, reason=reason, metadata=metadata)
        if cls is MeshError:
            result.code = code
    return result


def _bounded(text: str, limit: int) -> str:
    """``text`` if its UTF-8 form is at most ``limit`` bytes, else cut (on a character boundary) and marked."""
    if len(text) * 4 <= limit:  # the common case: short, whatever its characters
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    mark = f"... [cut; {len(encoded):,} bytes in all]"
    return encoded[: limit - len(mark)].decode("utf-8", "ignore") + mark


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _retry_info(retry_after: float | None) -> list[any_pb2.Any]:
    """``google.rpc.RetryInfo`` for a known wait (seconds), else nothing."""
    if retry_after is None:
        return []
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(int(retry_after * 1e9))
    return [_pack(info)]
