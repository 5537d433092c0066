"""Each mesh error maps to one gRPC status with ErrorInfo, and a client gets the same class back."""

from __future__ import annotations

import grpc
import pytest

from agentmesh import _errors as errors

CASES = [
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.AbortedError, grpc.StatusCode.ABORTED),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
]


@pytest.mark.parametrize(("cls", "code"), CASES)
def test_error_maps_to_its_status(cls: type[errors.MeshError], code: grpc.StatusCode) -> None:
    status = cls("something precise", metadata={"resource": "agents/x"}).to_status()
    assert status.code == code
    assert status.details == "something precise"
    assert any(key == "grpc-status-details-bin" for key, _ in status.trailing_metadata)


def test_a_status_is_cut_to_what_trailers_can_carry() -> None:
    error = errors.InvalidArgumentError(
        "lease " + "é" * 1_000_000, field="lease_id", metadata={"lease_id": "x" * 1_000_000}
    )
    status = error.to_status()
    assert len(status.details.encode()) <= errors.MAX_MESSAGE_BYTES and status.details.endswith("bytes in all]")
    trailers = sum(len(key) + len(value) for key, value in status.trailing_metadata)
    assert trailers < 4 * errors.MAX_MESSAGE_BYTES
    short = errors.NotFoundError("no task 't1'").to_status()
    assert short.details == "no task 't1'"
