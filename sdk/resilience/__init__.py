"""Client-side resilience: deadlines, retries with jittered backoff, circuit breakers.

``create_channel`` returns a :class:`MeshChannel`, which applies all of them to every call (the same policy
is available as grpc.aio interceptors for plain channels: ``MeshClientInterceptor.interceptors()``); other
clients (Triton, HTTP) use :class:`CircuitBreaker` and :class:`RetryPolicy` directly around any awaitable::

    breaker = breaker_for(url)
    result = await RetryPolicy().call(lambda: breaker.call(infer, request), idempotent=True)
"""

from __future__ import annotations

from agentmesh.resilience._breaker import (
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    CircuitOpenRpcError,
    breaker_for,
    is_failure,
)
from agentmesh.resilience._deadline import remaining_budget, with_deadline
from agentmesh.resilience._interceptor import MeshChannel, MeshClientInterceptor, client_policy, mesh_channel
from agentmesh.resilience._retry import RetryPolicy, is_idempotent_method

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitOpenRpcError",
    "MeshChannel",
    "MeshClientInterceptor",
    "RetryPolicy",
    "breaker_for",
    "client_policy",
    "is_failure",
    "is_idempotent_method",
    "mesh_channel",
    "remaining_budget",
    "with_deadline",
]
