"""Async client of Triton (KServe v2 gRPC) with a shared channel per URL, deadlines, retries, per-model
circuit breakers, metadata caching, model selection, and Prometheus metrics.

Calls go straight to the KServe v2 gRPC stub (``tritonclient.grpc.service_pb2_grpc``) with requests built
here, not through ``tritonclient``'s client object: a one-text embedding at 64 in flight then costs about
0.41 ms of the caller's CPU instead of 0.53 ms (its request and input wrappers, per-call retry loop and
task). Responses are read with ``tritonclient.grpc.InferResult``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.json_format import MessageToDict

from agentmesh._errors import (
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from agentmesh._settings import Settings
from agentmesh.inference._local import RECONNECT_CHANNEL_ARGS
from agentmesh.inference._merging import TextCallMerger
from agentmesh.inference._metrics import (
    TRITON_BATCH_SIZE,
    TRITON_LATENCY,
    TRITON_RETRIES,
)
from agentmesh.inference._results import (
    Classification,
    ClassificationResult,
    EmbeddingResult,
    InferenceResult,
    SentimentResult,
)
from agentmesh.inference._selection import ModelCatalog, ModelSpec, Tier, default_catalog
from agentmesh.resilience import CircuitBreaker, RetryPolicy, breaker_for

__all__ = ["InferenceClient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ERRORS: dict[str, type[MeshError]] = {
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "NOT_FOUND": NotFoundError,
    "INVALID_ARGUMENT": InvalidArgumentError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
}
# What Triton says (NOT_FOUND) of a model it has but cannot serve yet; an unknown model "is not found".
_NOT_LOADED_YET = ("has no available versions", "is not ready")
# Softmax temperature turning cosine similarities into label probabilities in :meth:`classify`.
_CLASSIFY_TEMPERATURE = 0.05
# How long the list of ready models (for selection) is trusted, seconds.
_INDEX_TTL = 10.0


@dataclass
class _Connection:
    """What all clients of one URL in one event loop share: the channel and the metadata caches."""

    url: str
    channel: grpc.aio.Channel
    stub: Any  # tritonclient.grpc.service_pb2_grpc.GRPCInferenceServiceStub
    # Held so the loop's id (the cache key) cannot be reused by a new loop while this entry exists.
    loop: asyncio.AbstractEventLoop
    users: int = 0
    configs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    metadata: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    ready_models: tuple[float, frozenset[str]] | None = None
    # Config and metadata fetches in flight, by (method, model, version): concurrent first callers share one.
    fetching: dict[tuple[str, str, str], asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    reachable: bool | None = None  # what the last readiness check found (None: not checked yet)


_CONNECTIONS: dict[tuple[str, int], _Connection] = {}
_INSTRUMENTS: dict[str, tuple[Any, Any]] = {}


def _status_name(exc: Exception) -> str:
    return exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "UNKNOWN"


def _message(exc: Exception) -> str:
    return (exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "") or str(exc)


def _as_json(message: Any) -> dict[str, Any]:
    """A response message as the JSON-style dict ``tritonclient``'s ``as_json=True`` gives."""
    return MessageToDict(message, preserving_proto_field_name=True)


class InferenceClient:
    """Calls Triton models; every result names the model and version that produced it.

    Clients of the same URL in the same event loop share one gRPC channel and the metadata cache; the
    per-model circuit breakers (``agentmesh.resilience``, endpoint ``triton:<url>/<model>``) are
    process-wide. Create one per process (or per agent) and ``await client.close()`` at the end.

    With ``merge_concurrent`` (the default), text calls of one model that fit in one batch and are made in
    the same event-loop turn (concurrent tickets, or the callers one batched answer has just woken) go to
    Triton as one request: its per-request cost, here and in tritonserver, is paid once, and Triton gets
    whole batches. A lone call is not delayed. Each caller still gets only its own rows, its own
    cancellation, and the shared request's error if that request fails (a refused batch is retried per
    caller, so one caller's bad input does not fail the others).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
        breaker_failure_threshold: int | None = None,
        breaker_reset_timeout: float | None = None,
        catalog: ModelCatalog | None = None,
        merge_concurrent: bool = True,
    ) -> None:
        settings = settings or Settings.from_env()
        self.url = url or settings.triton_url or f"127.0.0.1:{settings.triton_port}"
        self.deadline = deadline if deadline is not None else settings.default_deadline
        self.retry = retry or RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=1.0)
        # The breaker follows AGENTMESH_BREAKER_* unless the caller tunes it.
        self.breaker_failure_threshold = breaker_failure_threshold or settings.breaker_failure_threshold
        self.breaker_reset_timeout = breaker_reset_timeout or settings.breaker_reset_timeout
        self.catalog = catalog if catalog is not None else default_catalog()
        self._connection_key: tuple[str, int] | None = None
        self._prototypes: dict[tuple[str, tuple[str, ...]], npt.NDArray[np.float32]] = {}
        # Text calls (embed, sentiment, classify) of one model made in the same loop turn share a request.
        self._merger = TextCallMerger(self._infer_texts) if merge_concurrent else None

    # --- lifecycle -------------------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        if self._connection_key is not None:
            return _CONNECTIONS[self._connection_key]
        import tritonclient.grpc as triton_grpc
        from tritonclient.grpc import service_pb2_grpc

        loop = asyncio.get_running_loop()
        key = (self.url, id(loop))
        connection = _CONNECTIONS.get(key)
        if connection is None:
            options = [
                ("grpc.max_send_message_length", triton_grpc.MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", triton_grpc.MAX_GRPC_MESSAGE_SIZE),
                *RECONNECT_CHANNEL_ARGS,
            ]
            channel = grpc.aio.insecure_channel(self.url, options=options)
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            connection = _CONNECTIONS[key] = _Connection(self.url, channel, stub, loop)
        connection.users += 1
        self._connection_key = key
        return connection

    async def close(self) -> None:
        """Release this client's share of the channel (closed when its last user closes)."""
        if self._connection_key is None:
            return
        connection = _CONNECTIONS[self._connection_key]
        connection.users -= 1
        if connection.users <= 0:
            del _CONNECTIONS[self._connection_key]
            await connection.channel.close(None)
        self._connection_key = None

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- resilience --------------------------------------------------------------------------------------

    def breaker(self, model: str) -> CircuitBreaker:
        """The circuit breaker guarding ``model`` at this URL (process-wide, shared by all its clients)."""
        return breaker_for(
            f"triton:{self.url}/{model}",
            failure_threshold=self.breaker_failure_threshold,
            reset_timeout=self.breaker_reset_timeout,
        )

    async def _call(
        self, model: str, operation: Callable[[float], Awaitable[T]], deadline: float | None
    ) -> tuple[T, float]:
        """Run ``operation(seconds_left)`` through the model's breaker, retrying UNAVAILABLE with jittered
        backoff within one overall deadline. Returns the result and the latency of the successful attempt.
        """
        breaker = self.breaker(model)
        budget = self.deadline if deadline is None else deadline
        end = time.monotonic() + budget
        attempts = 0

        async def once() -> tuple[T, float]:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                TRITON_RETRIES.labels(model).inc()
            seconds_left = end - time.monotonic()
            if seconds_left <= 0:
                raise DeadlineExceededError(
                    f"deadline of {budget:.3f} s passed calling Triton model {model!r}",
                    metadata={"model": model, "url": self.url},
                )
            breaker.before_call()
            started = time.perf_counter()
            try:
                result = await operation(seconds_left)
            except Exception as exc:
                error = self._error(_status_name(exc), exc, model)
                TRITON_LATENCY.labels(model, error.code.name).observe(time.perf_counter() - started)
                breaker.record(error)
                if isinstance(error, NotFoundError) or error.reason == "TRITON_MODEL_NOT_READY":
                    self._forget(model)  # its config and metadata may change as it is (re)loaded
                raise error from None
            except BaseException:
                breaker.record_ignored()
                raise
            breaker.record_success()
            return result, time.perf_counter() - started

        return await self.retry.call(once, deadline=end)

    def _error(self, code: str, exc: Exception, model: str) -> MeshError:
        message = _message(exc)
        if code == "NOT_FOUND" and any(words in message for words in _NOT_LOADED_YET):
            # Triton knows the model but has no version ready: it is loading (a restarted Triton loads its models
            # after it answers) or failed to load. Retryable, unlike a model Triton has never heard of.
            return UnavailableError(
                f"Triton at {self.url} has no ready version of model {model!r} yet (loading after a restart?): "
                f"{message}",
                reason="TRITON_MODEL_NOT_READY",
                metadata={"model": model, "url": self.url},
            )
        kind = _ERRORS.get(code, InternalError)
        return kind(
            f"Triton {code} for model {model!r} at {self.url}: {message}",
            reason=f"TRITON_{code}",
            metadata={"model": model, "url": self.url},
        )

    def _forget(self, model: str) -> None:
        connection = self._connection()
        for cache in (connection.configs, connection.metadata):
            for key in [k for k in cache if k[0] == model]:
                del cache[key]
        connection.ready_models = None

    # --- raw inference and metadata ---------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[np.generic]],
        *,
        outputs: Sequence[str] | None = None,
        version: str = "",
        deadline: float | None = None,
    ) -> InferenceResult:
        """One inference; ``inputs`` maps input names to arrays (object arrays of str/bytes are BYTES)."""
        from tritonclient.grpc import InferResult, service_pb2

        if not inputs:
            raise InvalidArgumentError("at least one input is required", field="inputs")
        request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
        for name, array in inputs.items():
            array = np.asarray(array)
            dtype, raw = _tensor_contents(array)
            request.inputs.add(name=name, datatype=dtype, shape=array.shape)
            request.raw_input_contents.append(raw)
        for name in outputs or ():
            request.outputs.add(name=name)
        first = next(iter(inputs.values()))
        batch_size, latency_ok = _instruments(model)
        batch_size.observe(np.shape(first)[0] if np.ndim(first) else 1)
        stub = self._connection().stub

        async def attempt(seconds_left: float) -> Any:
            return await stub.ModelInfer(request, timeout=seconds_left)

        response, latency = await self._call(model, attempt, deadline)
        latency_ok.observe(latency)
        self.catalog.observe(model, latency)
        result = InferResult(response)
        values = {output.name: result.as_numpy(output.name) for output in response.outputs}
        return InferenceResult(
            model=response.model_name, version=response.model_version, outputs=values, latency_s=latency
        )

    async def model_config(
        self, model: str, version: str = "", *, deadline: float | None = None
    ) -> dict[str, Any]:
        """The model's configuration as JSON (cached per URL until the model disappears)."""
        response = await self._cached("ModelConfig", self._connection().configs, model, version, deadline)
        return dict(response.get("config", response))

    async def model_metadata(
        self, model: str, version: str = "", *, deadline: float | None = None
    ) -> dict[str, Any]:
        """The model's metadata (versions, inputs, outputs) as JSON (cached like :meth:`model_config`)."""
        return await self._cached("ModelMetadata", self._connection().metadata, model, version, deadline)

    async def _cached(
        self,
        method: str,
        cache: dict[tuple[str, str], dict[str, Any]],
        model: str,
        version: str,
        deadline: float | None,
        part: str | None = None,
    ) -> dict[str, Any]:
        """The KServe ``<method>`` (``ModelConfig``, ``ModelMetadata``) of ``model`` as JSON (its ``part`` if
        given), fetched once per URL.
        """
        from tritonclient.grpc import service_pb2

        key = (model, version)
        found = cache.get(key)
        if found is not None:
            return found
        # One fetch per model however many callers arrive before it is cached: they then resume together
        # (and their text calls can share a request).
        fetching = self._connection().fetching
        flight = fetching.get((method, *key))
        if flight is not None:
            return await asyncio.shield(flight)
        fetch = getattr(self._connection().stub, method)
        request = getattr(service_pb2, f"{method}Request")(name=model, version=version)

        async def attempt(seconds_left: float) -> Any:
            return _as_json(await fetch(request, timeout=seconds_left))

        async def fetched() -> dict[str, Any]:
            try:
                response, _ = await self._call(model, attempt, deadline)
            finally:
                del fetching[(method, *key)]
            found = cache[key] = dict(response.get(part, response) if part else response)
            return found

        flight = fetching[(method, *key)] = asyncio.ensure_future(fetched())
        return await asyncio.shield(flight)

    async def is_ready(self, *, deadline: float = 1.0) -> bool:
        """Whether the server answers and reports ready (never raises).

        A change is logged once: WARNING when Triton goes away (with why), INFO when it is back.
        """
        from tritonclient.grpc import service_pb2

        connection = self._connection()
        problem = ""
        try:
            answer = await connection.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=deadline)
            ready = bool(answer.ready)
            problem = "" if ready else "it reports not ready"
        except Exception as exc:
            ready = False
            problem = f"{_status_name(exc)} {_message(exc)}"
        if ready != connection.reachable:
            if not ready:
                logger.warning("dependency triton at %s is down: %s", self.url, problem)
            elif connection.reachable is False:
                logger.info("dependency triton at %s is back", self.url)
            connection.reachable = ready
        return ready

    async def ready_models(self, *, deadline: float | None = None) -> frozenset[str]:
        """Names of the models the server has ready (cached for a few seconds)."""
        connection = self._connection()
        now = time.monotonic()
        if connection.ready_models is None or now - connection.ready_models[0] > _INDEX_TTL:
            from tritonclient.grpc import service_pb2

            stub = connection.stub

            async def attempt(seconds_left: float) -> Any:
                request = service_pb2.RepositoryIndexRequest()
                return _as_json(await stub.RepositoryIndex(request, timeout=seconds_left))

            index, _ = await self._call("<repository>", attempt, deadline)
            names = frozenset(m["name"] for m in index.get("models", []) if m.get("state") == "READY")
            connection.ready_models = (now, names)
        return connection.ready_models[1]

    async def select(
        self,
        task: str,
        *,
        max_latency_ms: float | None = None,
        max_cost_per_1k: float | None = None,
        min_tier: Tier = Tier.SMALL,
        max_tier: Tier = Tier.LARGE,
    ) -> ModelSpec:
        """The best model for ``task`` within the budget among those the server has ready
        (``FailedPreconditionError`` when none fits; see :meth:`ModelCatalog.select`).
        """
        return self.catalog.select(
            task,
            max_latency_ms=max_latency_ms,
            max_cost_per_1k=max_cost_per_1k,
            min_tier=min_tier,
            max_tier=max_tier,
            available=await self.ready_models(),
        )

    # --- conveniences --------------------------------------------------------------------------------------

    def _default_model(self, task: str) -> str:
        return self.catalog.select(task).name

    async def embed(
        self, texts: Sequence[str], *, model: str | None = None, deadline: float | None = None
    ) -> EmbeddingResult:
        """Unit-length sentence embeddings of ``texts`` (split into the model's max batch, sent concurrently)."""
        texts = _checked_texts(texts)
        model = model or self._default_model("embedding")
        parts = await self._chunked(model, texts, ["EMBEDDING"], deadline)
        embeddings = np.concatenate([p.outputs["EMBEDDING"] for p in parts]).astype(np.float32, copy=False)
        return EmbeddingResult(model=parts[0].model, version=parts[0].version, embeddings=embeddings)

    async def _chunked(
        self, model: str, texts: list[str], outputs: list[str] | None, deadline: float | None
    ) -> list[InferenceResult]:
        """``texts`` as the ``TEXT`` input of ``model``, split into its max batch, the parts sent concurrently."""
        chunk = int((await self.model_config(model, deadline=deadline)).get("max_batch_size", 0)) or len(
            texts
        )
        if len(texts) <= chunk:  # one request: no task to gather
            if self._merger is not None:
                return [await self._merger.call(model, texts, outputs, deadline, chunk)]
            return [await self._infer_texts(model, texts, outputs, deadline)]
        return list(
            await asyncio.gather(
                *(
                    self._infer_texts(model, texts[i : i + chunk], outputs, deadline)
                    for i in range(0, len(texts), chunk)
                )
            )
        )

    def _infer_texts(
        self, model: str, texts: list[str], outputs: list[str] | None, deadline: float | None
    ) -> Awaitable[InferenceResult]:
        return self.infer(model, {"TEXT": _text_column(texts)}, outputs=outputs, deadline=deadline)

    async def sentiment(
        self, texts: Sequence[str], *, model: str | None = None, deadline: float | None = None
    ) -> SentimentResult:
        """Sentiment of each text: a score in [-1, 1] (negative = unhappy) and a label."""
        texts = _checked_texts(texts)
        model = model or self._default_model("sentiment")
        parts = await self._chunked(model, texts, None, deadline)
        scores = [float(s) for p in parts for s in p.outputs["SCORE"].reshape(-1)]
        labels = [_text(label) for p in parts for label in p.outputs["LABEL"].reshape(-1)]
        return SentimentResult(model=parts[0].model, version=parts[0].version, scores=scores, labels=labels)

    async def classify(
        self,
        texts: Sequence[str],
        labels: Mapping[str, Sequence[str]],
        *,
        model: str | None = None,
        deadline: float | None = None,
    ) -> ClassificationResult:
        """Zero-shot classification by embedding: each label is described by prototype sentences; a text
        gets the label whose closest prototype is most similar. Prototype embeddings are cached.
        """
        texts = _checked_texts(texts)
        if not labels or any(not prototypes for prototypes in labels.values()):
            raise InvalidArgumentError("every label needs at least one prototype sentence", field="labels")
        model = model or self._default_model("embedding")
        missing = [tuple(p) for p in labels.values() if (model, tuple(p)) not in self._prototypes]
        flat = [sentence for prototypes in missing for sentence in prototypes]
        embedded = await self.embed([*texts, *flat], model=model, deadline=deadline)
        offset = len(texts)
        for prototypes in missing:
            self._prototypes[(model, prototypes)] = embedded.embeddings[offset : offset + len(prototypes)]
            offset += len(prototypes)
        names = list(labels)
        similarity = np.stack(
            [
                (embedded.embeddings[: len(texts)] @ self._prototypes[(model, tuple(labels[n]))].T).max(
                    axis=1
                )
                for n in names
            ],
            axis=1,
        )
        logits = similarity / _CLASSIFY_TEMPERATURE
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        items = []
        for row in probabilities:
            best = int(row.argmax())
            items.append(
                Classification(
                    label=names[best],
                    score=float(row[best]),
                    scores={n: float(p) for n, p in zip(names, row, strict=True)},
                )
            )
        return ClassificationResult(model=embedded.model, version=embedded.version, items=items)


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidArgumentError("texts must be a list of strings, not one string", field="texts")
    texts = list(texts)
    if not texts:
        raise InvalidArgumentError("texts must not be empty", field="texts")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgumentError(
                f"texts[{index}] is {type(text).__name__}, not str", field=f"texts[{index}]"
            )
    return texts


def _tensor_contents(array: npt.NDArray[Any]) -> tuple[str, bytes]:
    """The KServe datatype and raw contents of ``array`` (object, bytes and str arrays are BYTES: each item
    as a 4-byte little-endian length and its bytes, str as UTF-8, as ``tritonclient`` serialises them).
    """
    from tritonclient.utils import np_to_triton_dtype

    if array.dtype == object or array.dtype.kind in "SU":
        items = [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.reshape(-1)]
        return "BYTES", b"".join(len(item).to_bytes(4, "little") + item for item in items)
    dtype = np_to_triton_dtype(array.dtype)
    if dtype is None:
        raise InvalidArgumentError(f"arrays of {array.dtype} have no Triton datatype", field="inputs")
    return str(dtype), np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _instruments(model: str) -> tuple[Any, Any]:
    """``model``'s request batch-size histogram and its latency histogram for OK calls (bound once)."""
    found = _INSTRUMENTS.get(model)
    if found is None:
        found = _INSTRUMENTS[model] = (TRITON_BATCH_SIZE.labels(model), TRITON_LATENCY.labels(model, "OK"))
    return found


def _text_column(texts: Sequence[str]) -> npt.NDArray[np.object_]:
    return np.array([t.encode("utf-8") for t in texts], dtype=object).reshape(-1, 1)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
