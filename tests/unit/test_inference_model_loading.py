"""A restarted Triton answers before it has loaded its models: NOT_FOUND "Request for unknown model: 'x' has
no available versions". That is retried as UNAVAILABLE (a support ticket's step failed for good on it when
Triton was killed while the ticket ran); a model Triton has never heard of stays NOT_FOUND, not retried."""

from __future__ import annotations

import grpc
import pytest

from agentmesh._errors import NotFoundError, UnavailableError
from agentmesh.inference import InferenceClient, free_port
from agentmesh.resilience import RetryPolicy

pytestmark = pytest.mark.asyncio


def _triton_error(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def test_a_model_still_loading_is_retried_and_served_once_loaded() -> None:
    client = InferenceClient(
        f"127.0.0.1:{free_port()}", deadline=5.0, retry=RetryPolicy(max_attempts=4, initial_backoff=0.01)
    )
    calls = 0

    async def infer(seconds_left: float) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise _triton_error("Request for unknown model: 'loading_model' has no available versions")
        return "embedded"

    assert (await client._call("loading_model", infer, None))[0] == "embedded"
    assert calls == 3

    async def never_ready(seconds_left: float) -> str:
        raise _triton_error("Request for unknown model: 'stuck_model' has no available versions")

    with pytest.raises(UnavailableError) as waiting:
        await client._call("stuck_model", never_ready, None)
    assert waiting.value.reason == "TRITON_MODEL_NOT_READY" and "no ready version of model 'stuck_model'" in (
        waiting.value.message
    )

    calls = 0

    async def unknown(seconds_left: float) -> str:
        nonlocal calls
        calls += 1
        raise _triton_error("Request for unknown model: 'typo_model' is not found")

    with pytest.raises(NotFoundError):
        await client._call("typo_model", unknown, None)
    assert calls == 1
    await client.close()
