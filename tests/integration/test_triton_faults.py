"""Triton going away and coming back, as an agent holding one InferenceClient sees it; and the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from agentmesh._errors import UnavailableError
from agentmesh._settings import Settings
from agentmesh.inference import EmbeddingResult, InferenceClient, LocalTriton, free_port
from agentmesh.resilience import BreakerState, CircuitOpenError

pytestmark = pytest.mark.triton

TEXT = "I want a refund"


async def embed_when_back(client: InferenceClient, within: float) -> EmbeddingResult:
    """Call until the server answers again (the breaker lets a probe through after its reset timeout)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await client.embed([TEXT])
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # poll interval


async def test_killed_triton_fails_fast_opens_breaker_and_restart_is_used_again(triton: LocalTriton) -> None:
    # The session's server is killed and restarted on the same ports; later tests find it serving again.
    client = InferenceClient(triton.grpc_url, deadline=5.0)
    breaker = client.breaker("minilm_embedding")
    try:
        before = await client.embed([TEXT])
        # Killed with 24 callers in flight, whose calls share requests: each caller gets its answer or
        # UNAVAILABLE within its deadline; none is left waiting.
        in_flight = [asyncio.ensure_future(client.embed([f"{TEXT} {i}"])) for i in range(24)]
        for _ in range(3):  # the calls' turn, the merge, the request's send
            await asyncio.sleep(0)
        await triton.kill()
        async with asyncio.timeout(6.0):
            outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(o, EmbeddingResult | UnavailableError) for o in outcomes), outcomes

        started = time.perf_counter()
        with pytest.raises(UnavailableError):
            await client.embed([TEXT])
        assert time.perf_counter() - started < 1.0  # retried briefly, well inside the 5 s deadline
        # Each refused call counts (the breaker's threshold is the client's own, whoever used this Triton before).
        errors = []
        for _ in range(5):
            if breaker.state is BreakerState.OPEN:
                break
            with pytest.raises(UnavailableError) as failed:
                await client.embed([TEXT])
            errors.append(f"{failed.value.reason}: {failed.value.message[:120]}")
        assert breaker.state is BreakerState.OPEN, (breaker.state, errors, outcomes)
        gauge = REGISTRY.get_sample_value(
            "agentmesh_circuit_breaker_state", {"endpoint": f"triton:{triton.grpc_url}/minilm_embedding"}
        )
        assert gauge == BreakerState.OPEN

        started = time.perf_counter()
        with pytest.raises(CircuitOpenError):
            await client.embed([TEXT])
        assert time.perf_counter() - started < 0.2  # refused without touching the network

        await triton.start()  # same ports, new process
        # Back once the breaker's reset timeout lets a probe through (or at once if it already passed).
        after = await embed_when_back(client, within=breaker.reset_timeout + 5.0)
        np.testing.assert_allclose(after.embeddings, before.embeddings, atol=1e-6)
        assert breaker.state is BreakerState.CLOSED
    finally:
        await client.close()
        await triton.start()  # no-op when running


async def test_agentmesh_triton_serves_until_sigterm() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentmesh.cli",
        "triton",
        "--port",
        str(port),
        "--model",
        "minilm_embedding",
        env={**os.environ, "AGENTMESH_HOME": str(Settings.from_env().home.resolve())},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    client = InferenceClient(f"127.0.0.1:{port}", deadline=10.0)
    try:
        deadline = time.monotonic() + 60
        while not await client.is_ready():
            assert process.returncode is None, "agentmesh triton exited before it was ready"
            assert time.monotonic() < deadline, "agentmesh triton not ready within 60 s"
            await asyncio.sleep(0.05)  # poll interval
        result = await client.embed([TEXT])
        assert (result.model, result.version, result.dims) == ("minilm_embedding", "1", 384)

        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, stderr.decode()[-2000:]
        assert b"triton stopped" in stderr
        assert not await client.is_ready(deadline=0.5)
    finally:
        await client.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
