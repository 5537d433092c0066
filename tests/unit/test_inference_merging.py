"""Concurrent text calls merged into one request: each caller gets its own rows, errors and cancellation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agentmesh._errors import DeadlineExceededError, InvalidArgumentError, UnavailableError
from agentmesh.inference._merging import TextCallMerger
from agentmesh.inference._results import InferenceResult


class FakeModel:
    """Answers each text with its length; records every request it receives."""

    def __init__(self, *, refuse: str | None = None, fail: Exception | None = None) -> None:
        self.requests: list[tuple[str, list[str], float | None]] = []
        self.refuse = refuse
        self.fail = fail
        self.release = asyncio.Event()
        self.release.set()

    async def run(
        self, model: str, texts: list[str], outputs: list[str] | None, deadline: float | None
    ) -> InferenceResult:
        self.requests.append((model, list(texts), deadline))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        if self.refuse is not None and self.refuse in texts:
            raise InvalidArgumentError(f"cannot embed {self.refuse!r}")
        lengths = np.array([[len(t)] for t in texts], dtype=np.int64)
        return InferenceResult(model=model, version="7", outputs={"LENGTH": lengths}, latency_s=0.001)


async def test_calls_of_one_turn_share_a_request_and_get_their_own_rows() -> None:
    fake = FakeModel()
    merger = TextCallMerger(fake.run)
    texts = [["a"], ["bb", "ccc"], ["dddd"]]
    results = await asyncio.gather(*(merger.call("m", t, None, None, 32) for t in texts))
    assert [r for _, r, _ in fake.requests] == [["a", "bb", "ccc", "dddd"]]
    assert [r.outputs["LENGTH"].reshape(-1).tolist() for r in results] == [[1], [2, 3], [4]]
    assert all((r.model, r.version) == ("m", "7") for r in results)


async def test_a_lone_call_goes_out_alone_and_later_calls_make_a_new_request() -> None:
    fake = FakeModel()
    merger = TextCallMerger(fake.run)
    first = await merger.call("m", ["one"], None, None, 32)
    second = await merger.call("m", ["three"], None, None, 32)
    assert [r for _, r, _ in fake.requests] == [["one"], ["three"]]
    assert first.outputs["LENGTH"].tolist() == [[3]] and second.outputs["LENGTH"].tolist() == [[5]]


async def test_requests_respect_the_batch_limit_without_splitting_a_caller() -> None:
    fake = FakeModel()
    merger = TextCallMerger(fake.run)
    calls = [["x"] * 3, ["y"] * 3, ["z"] * 2, ["w"]]
    results = await asyncio.gather(*(merger.call("m", t, None, None, 4) for t in calls))
    assert [len(r) for _, r, _ in fake.requests] == [3, 3, 3]  # 3 | 3 | 2+1: no request above 4
    assert [len(r.outputs["LENGTH"]) for r in results] == [3, 3, 2, 1]


async def test_different_models_are_not_merged_and_deadlines_merge_up_to_the_latest() -> None:
    fake = FakeModel()
    merger = TextCallMerger(fake.run)
    await asyncio.gather(
        merger.call("m", ["a"], None, None, 32),
        merger.call("other", ["b"], None, None, 32),
        merger.call("m", ["c"], None, 2.0, 32),
        merger.call("m", ["d"], None, None, 32),
        merger.call("m", ["e"], None, 5.0, 32),
    )
    assert sorted((m, t) for m, t, _ in fake.requests) == [
        ("m", ["a", "d"]),
        ("m", ["c", "e"]),
        ("other", ["b"]),
    ]
    deadlines = {tuple(t): d for _, t, d in fake.requests}
    assert deadlines[("a", "d")] is None  # the client's default deadline
    assert 4.9 < (deadlines[("c", "e")] or 0) <= 5.0  # the latest of the callers' own


async def test_each_caller_keeps_its_own_deadline_in_a_shared_request() -> None:
    fake = FakeModel()
    fake.release.clear()
    merger = TextCallMerger(fake.run)
    hurried = asyncio.ensure_future(merger.call("m", ["quick"], None, 0.05, 32))
    patient = asyncio.ensure_future(merger.call("m", ["slow"], None, 10.0, 32))
    with pytest.raises(DeadlineExceededError, match=r"0\.050 s"):
        await hurried
    assert not patient.done()  # the shared request goes on for the caller that can still wait
    fake.release.set()
    assert (await patient).outputs["LENGTH"].tolist() == [[4]]
    assert [t for _, t, _ in fake.requests] == [["quick", "slow"]]


async def test_a_failed_request_fails_every_caller_that_shared_it() -> None:
    fake = FakeModel(fail=UnavailableError("triton went away"))
    merger = TextCallMerger(fake.run)
    outcomes = await asyncio.gather(
        *(merger.call("m", [t], None, None, 32) for t in "abc"), return_exceptions=True
    )
    assert len(fake.requests) == 1
    assert all(isinstance(o, UnavailableError) for o in outcomes)


async def test_one_callers_refused_text_does_not_fail_the_others() -> None:
    fake = FakeModel(refuse="poison")
    merger = TextCallMerger(fake.run)
    outcomes = await asyncio.gather(
        *(merger.call("m", [t], None, None, 32) for t in ["fine", "poison", "good"]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], InvalidArgumentError)
    assert [o.outputs["LENGTH"].tolist() for o in (outcomes[0], outcomes[2])] == [[[4]], [[4]]]  # type: ignore[union-attr]
    assert fake.requests[0][1] == ["fine", "poison", "good"] and len(fake.requests) == 4  # then one each


async def test_a_cancelled_caller_leaves_the_shared_request_to_the_others() -> None:
    fake = FakeModel()
    fake.release.clear()
    merger = TextCallMerger(fake.run)
    leaving = asyncio.ensure_future(merger.call("m", ["gone"], None, None, 32))
    staying = asyncio.ensure_future(merger.call("m", ["stays"], None, None, 32))
    for _ in range(3):  # the calls' turn, the flush's, the request's first step
        await asyncio.sleep(0)
    assert fake.requests  # the shared request is out
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    fake.release.set()
    assert (await staying).outputs["LENGTH"].tolist() == [[5]]
    assert fake.requests == [("m", ["gone", "stays"], None)]


async def test_callers_that_gave_up_before_the_send_cost_no_request() -> None:
    fake = FakeModel()
    merger = TextCallMerger(fake.run)
    call = asyncio.ensure_future(merger.call("m", ["never"], None, None, 32))
    await asyncio.sleep(0)  # the call is queued for the next turn ...
    call.cancel()  # ... and abandoned before it
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(3):
        await asyncio.sleep(0)
    assert fake.requests == []
