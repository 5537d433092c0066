"""The inference client's contract that needs no server: selection policy, input checks, fast failure."""

from __future__ import annotations

import os
import time

import pytest

import agentmesh.inference as inference
from agentmesh._errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from agentmesh.inference import InferenceClient, ModelCatalog, ModelSpec, Tier, free_port, triton_environment


def test_public_names_are_sorted_and_exist() -> None:
    assert inference.__all__ == sorted(inference.__all__)
    assert all(hasattr(inference, name) for name in inference.__all__)


def catalog() -> ModelCatalog:
    return ModelCatalog(
        [
            ModelSpec("tiny", "embedding", Tier.SMALL, latency_ms=5, cost_per_1k=1),
            ModelSpec("base", "embedding", Tier.MEDIUM, latency_ms=20, cost_per_1k=4),
            ModelSpec("xl", "embedding", Tier.LARGE, latency_ms=80, cost_per_1k=20),
            ModelSpec("llm", "generation", Tier.LARGE, latency_ms=900, cost_per_1k=100),
        ]
    )


def test_selection_takes_the_largest_tier_within_budget() -> None:
    models = catalog()
    assert models.select("embedding").name == "xl"
    assert models.select("embedding", max_latency_ms=30).name == "base"
    assert models.select("embedding", max_cost_per_1k=2).name == "tiny"
    assert models.select("embedding", max_tier=Tier.MEDIUM).name == "base"
    assert models.select("embedding", available={"tiny", "llm"}).name == "tiny"


def test_selection_follows_observed_latency() -> None:
    models = catalog()
    models.observe("base", 0.200)  # base turned out to take 200 ms
    assert models.select("embedding", max_latency_ms=30).name == "tiny"


def test_selection_explains_when_nothing_fits() -> None:
    with pytest.raises(FailedPreconditionError, match="generation") as error:
        catalog().select("generation", max_latency_ms=100)
    assert error.value.metadata["task"] == "generation"
    with pytest.raises(FailedPreconditionError, match="none registered"):
        catalog().select("translation")


async def test_texts_are_checked_before_any_call() -> None:
    client = InferenceClient(f"127.0.0.1:{free_port()}")
    with pytest.raises(InvalidArgumentError) as one_string:
        await client.embed("not a list")  # type: ignore[arg-type]
    assert one_string.value.field == "texts"
    with pytest.raises(InvalidArgumentError) as not_text:
        await client.embed(["fine", 3])  # type: ignore[list-item]
    assert not_text.value.field == "texts[1]"
    with pytest.raises(InvalidArgumentError) as no_labels:
        await client.classify(["a ticket"], {"billing": []})
    assert no_labels.value.field == "labels"
    await client.close()


async def test_nothing_listening_fails_fast_with_unavailable() -> None:
    client = InferenceClient(f"127.0.0.1:{free_port()}", deadline=5.0)
    started = time.perf_counter()
    with pytest.raises(UnavailableError) as error:
        await client.embed(["hello"])
    assert time.perf_counter() - started < 1.5
    assert error.value.metadata["model"] == "minilm_embedding"
    assert not await client.is_ready(deadline=0.2)
    await client.close()


def test_triton_environment_finds_bundled_libraries_and_venv_python() -> None:
    env = triton_environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]
    assert env["LD_LIBRARY_PATH"].endswith(os.pathsep + "/opt/lib")
    assert env["PATH"].split(os.pathsep)[0].endswith("bin")
    assert env["PATH"].endswith("/usr/bin")
