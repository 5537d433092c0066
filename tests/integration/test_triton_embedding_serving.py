"""The served embedding model's batching and run-splitting: the properties bench/bench_embeddings.py's
targets rely on (a bounded tail at 64 in flight, a lone request not waiting for a batch, no padding to a
fixed length), checked on the configuration a real Triton loaded and on the model's own code.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from agentmesh.inference import InferenceClient
from agentmesh.inference._repository import SOURCE_MODEL_REPOSITORY

pytestmark = pytest.mark.triton


def embedding_model_code() -> ModuleType:
    """The shipped ``minilm_embedding/1/model.py`` (its run planner and Embedder need no Triton)."""
    path = SOURCE_MODEL_REPOSITORY / "minilm_embedding" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("minilm_embedding_model_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parameter(config: dict[str, object], key: str) -> str:
    parameters = config.get("parameters", {})
    assert isinstance(parameters, dict)
    return str(parameters[key]["string_value"])


async def test_served_config_batches_small_on_one_thread_per_instance(inference: InferenceClient) -> None:
    config = await inference.model_config("minilm_embedding")
    batching = config["dynamic_batching"]
    # A lone request pays at most 1 ms of queue delay (concurrency-1 latency within 1.25x of batch 1).
    assert 0 < int(batching.get("max_queue_delay_microseconds", 0)) <= 1000
    # The batch cap that holds under load is max_batch_size (Triton grows a pending batch up to it while
    # the instances are busy): it bounds how long a request waits behind one batch.
    max_batch = int(config["max_batch_size"])
    assert 8 <= max_batch <= 32
    # One single-thread instance per core; KIND_CPU also loads on a GPU Triton (onnxruntime picks CUDA there).
    (group,) = config["instance_group"]
    assert group["kind"] == "KIND_CPU" and int(group["count"]) >= 2
    assert parameter(config, "intra_op_threads") == "1"
    assert parameter(config, "execution_provider") == "auto"
    # Runs are split by length on CPU, never padded to a fixed 128/256.
    assert int(parameter(config, "run_overhead_tokens")) > 0
    assert int(parameter(config, "session_batch")) >= max_batch


def test_mixed_lengths_run_in_tight_groups_and_similar_lengths_together() -> None:
    plan_runs = embedding_model_code().plan_runs
    # Seven short texts and one long one: two runs, the short ones not padded to the long one's length.
    assert plan_runs([9, 9, 9, 12, 12, 12, 12, 60], max_run=32, overhead_tokens=12) == [(0, 7), (7, 8)]
    # Texts of about the same length share one run (one overhead), up to max_run texts per run.
    assert plan_runs([16] * 8, max_run=32, overhead_tokens=12) == [(0, 8)]
    assert plan_runs([16] * 8, max_run=4, overhead_tokens=12) == [(0, 4), (4, 8)]
    # A run overhead beyond any padding (the GPU setting) keeps the whole batch in one run.
    assert plan_runs([3, 9, 60, 200], max_run=1 << 30, overhead_tokens=1 << 30) == [(0, 4)]
    assert plan_runs([], max_run=32, overhead_tokens=12) == []
