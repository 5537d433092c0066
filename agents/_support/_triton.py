"""``TritonAgent``: an agent that calls Triton, with one inference client and model usage recorded per call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agentmesh._errors import MeshError
from agentmesh._settings import Settings
from agentmesh.agent import Agent, ModelUsage, SkillContext
from agentmesh.inference import EmbeddingResult, InferenceClient, SentimentResult

__all__ = ["MAX_SENTENCES", "TritonAgent"]

logger = logging.getLogger(__name__)

# Sentences of one message scored or embedded at most (the request is usually up front; bounds the cost).
MAX_SENTENCES = 12
# Reusable embeddings kept per agent (384 float32 each: 4096 is ~6 MiB).
_VECTOR_CACHE_SIZE = 4096


class TritonAgent(Agent):
    """Base of the support agents that need Triton.

    Subclasses override :meth:`prepare` for work that needs Triton once (embedding prototypes or a
    knowledge base). It runs at startup and, if Triton was not reachable then, again on the next readiness
    check or call, so an agent started before Triton (or outliving a Triton restart) recovers by itself.
    """

    inference: InferenceClient

    def __init__(self, settings: Settings | None = None, *, inference: InferenceClient | None = None) -> None:
        super().__init__(settings)
        self._given_inference = inference
        self._prepared = False
        self._prepare_lock = asyncio.Lock()
        self._vectors: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._vectors_model: tuple[str, str] | None = None

    async def startup(self) -> None:
        """Open the Triton client and prepare, tolerating a Triton that is not up yet."""
        self.inference = self._given_inference or InferenceClient(settings=self.settings)
        try:
            await self.ensure_prepared()
        except MeshError as exc:
            logger.warning("%s: Triton not usable yet (%s); will retry when asked", self.card.name, exc)

    async def shutdown(self) -> None:
        """Close the Triton client (unless it was given by the caller, who then closes it)."""
        if self._given_inference is None and hasattr(self, "inference"):
            await self.inference.close()

    async def ready(self) -> bool:
        """Serving once Triton answers and :meth:`prepare` has run."""
        if not await self.inference.is_ready():
            return False
        try:
            await self.ensure_prepared()
        except MeshError:
            return False
        return True

    async def prepare(self, ctx: SkillContext | None) -> None:
        """Work that needs Triton once; raise a ``MeshError`` when Triton cannot serve it yet."""

    async def ensure_prepared(self, ctx: SkillContext | None = None) -> None:
        """Run :meth:`prepare` once (concurrent callers wait for the same run)."""
        if self._prepared:
            return
        async with self._prepare_lock:
            if not self._prepared:
                await self.prepare(ctx)
                self._prepared = True

    async def embed(self, texts: Sequence[str], ctx: SkillContext | None) -> EmbeddingResult:
        """Unit-length embeddings of ``texts`` through Triton, recorded as a model usage of ``ctx``."""
        started = time.perf_counter()
        result = await self.inference.embed(list(texts), deadline=_deadline(ctx))
        _record(ctx, result.model, result.version, started)
        return result

    async def embed_in_batches(
        self, texts: Sequence[str], ctx: SkillContext | None, batch: int = 32
    ) -> npt.NDArray[np.float32]:
        """Embeddings of many texts (prototypes, a knowledge base), one batch after another: each call has
        its own deadline, so preparing on a busy Triton is slow rather than failing.
        """
        rows = [(await self.embed(texts[i : i + batch], ctx)).embeddings for i in range(0, len(texts), batch)]
        return np.vstack(rows)

    async def sentiment(self, texts: Sequence[str], ctx: SkillContext | None) -> SentimentResult:
        """Sentiment scores of ``texts`` through Triton's sentiment model, recorded as a model usage."""
        started = time.perf_counter()
        result = await self.inference.sentiment(list(texts), deadline=_deadline(ctx))
        _record(ctx, result.model, result.version, started)
        return result

    async def message_sentiment(self, text: str, ctx: SkillContext | None) -> tuple[float, str]:
        """A message's sentiment: the model's score in [-1, 1] and label (negative / neutral / positive).
        The model reads the whole message (its sentences included), so one text is one Triton row.
        """
        result = await self.sentiment([text], ctx)
        return result.scores[0], result.labels[0]

    async def embed_reusing(
        self, fresh: Sequence[str], reusable: Sequence[str], ctx: SkillContext | None
    ) -> EmbeddingResult:
        """Embeddings of ``fresh`` then ``reusable`` texts, in that order. Reusable texts (article sentences,
        seen again and again) come from an in-memory LRU cache when seen before, so the one Triton call
        carries only new texts; the cache is dropped when Triton answers with another model or version.
        """
        if not fresh:
            raise ValueError("embed_reusing needs at least one fresh text (it names the model used)")
        missing = [t for t in dict.fromkeys(reusable) if t not in self._vectors]
        result = await self.embed([*fresh, *missing], ctx)
        if (result.model, result.version) != self._vectors_model:
            self._vectors.clear()
            self._vectors_model = (result.model, result.version)
            if len(missing) != len(set(reusable)):  # cached vectors came from the previous model
                return await self.embed([*fresh, *reusable], ctx)
        for text, vector in zip(missing, result.embeddings[len(fresh) :], strict=True):
            self._vectors[text] = vector
        for text in reusable:
            self._vectors.move_to_end(text)
        while len(self._vectors) > _VECTOR_CACHE_SIZE:
            self._vectors.popitem(last=False)
        rows = [result.embeddings[: len(fresh)], *(self._vectors[t][None, :] for t in reusable)]
        return EmbeddingResult(model=result.model, version=result.version, embeddings=np.vstack(rows))


def _deadline(ctx: SkillContext | None) -> float | None:
    # Never wait on Triton past the caller's own deadline.
    return ctx.time_remaining() if ctx is not None else None


def _record(ctx: SkillContext | None, model: str, version: str, started: float) -> None:
    if ctx is not None:
        ctx.record_model_usage(ModelUsage(model, version, time.perf_counter() - started))
