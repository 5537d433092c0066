"""Model selection by policy: small / medium / large tiers chosen by a latency or cost budget and task needs."""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable
from dataclasses import dataclass

from agentmesh._errors import FailedPreconditionError

__all__ = ["DEFAULT_MODELS", "ModelCatalog", "ModelSpec", "Tier", "default_catalog"]


class Tier(enum.IntEnum):
    """Model size tiers; a larger tier is assumed better and slower/costlier."""

    SMALL = 1
    MEDIUM = 2
    LARGE = 3


@dataclass(frozen=True)
class ModelSpec:
    """A model Triton may serve: what task it does, its tier, expected latency and relative cost."""

    name: str
    task: str
    tier: Tier
    # Expected p50 latency of one request, milliseconds (replaced by observed latency once calls are made).
    latency_ms: float
    # Relative cost per 1,000 requests (GPU-seconds, money: any unit, used only for comparison).
    cost_per_1k: float
    description: str = ""


class ModelCatalog:
    """A registry of models per task; :meth:`select` applies the policy."""

    def __init__(self, specs: Iterable[ModelSpec] = (), *, smoothing: float = 0.2) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._observed_ms: dict[str, float] = {}
        self._smoothing = smoothing
        for spec in specs:
            self.register(spec)

    def register(self, spec: ModelSpec) -> None:
        """Add or replace a model."""
        self._specs[spec.name] = spec

    def get(self, name: str) -> ModelSpec | None:
        """The spec of ``name``, if registered."""
        return self._specs.get(name)

    def models(self, task: str | None = None) -> list[ModelSpec]:
        """Registered models (for ``task`` if given), smallest tier first."""
        specs = [s for s in self._specs.values() if task is None or s.task == task]
        return sorted(specs, key=lambda s: (s.tier, s.name))

    def observe(self, name: str, seconds: float) -> None:
        """Feed an observed call latency (exponentially smoothed) so selection follows reality."""
        ms = seconds * 1000.0
        previous = self._observed_ms.get(name)
        self._observed_ms[name] = ms if previous is None else previous + self._smoothing * (ms - previous)

    def expected_latency_ms(self, name: str) -> float:
        """Observed smoothed latency if known, else the declared one."""
        observed = self._observed_ms.get(name)
        if observed is not None:
            return observed
        spec = self._specs.get(name)
        return spec.latency_ms if spec is not None else float("inf")

    def select(
        self,
        task: str,
        *,
        max_latency_ms: float | None = None,
        max_cost_per_1k: float | None = None,
        min_tier: Tier = Tier.SMALL,
        max_tier: Tier = Tier.LARGE,
        available: Container[str] | None = None,
    ) -> ModelSpec:
        """The largest-tier model for ``task`` within the budget (ties: the faster); ``available`` limits the
        choice to models the server has ready. Raises ``FailedPreconditionError`` when nothing fits.
        """
        fitting = [
            spec
            for spec in self.models(task)
            if min_tier <= spec.tier <= max_tier
            and (available is None or spec.name in available)
            and (max_latency_ms is None or self.expected_latency_ms(spec.name) <= max_latency_ms)
            and (max_cost_per_1k is None or spec.cost_per_1k <= max_cost_per_1k)
        ]
        if not fitting:
            known = ", ".join(s.name for s in self.models(task)) or "none registered"
            raise FailedPreconditionError(
                f"no model for task {task!r} fits tier {min_tier.name}..{max_tier.name}, "
                f"latency <= {max_latency_ms} ms, cost <= {max_cost_per_1k} (known: {known})",
                reason="NO_MODEL_FITS",
                metadata={"task": task},
            )
        return max(fitting, key=lambda s: (s.tier, -self.expected_latency_ms(s.name)))


# What the shipped model repository (inference/models/) serves. Production adds larger tiers served on GPU nodes.
DEFAULT_MODELS = (
    ModelSpec(
        "minilm_embedding",
        "embedding",
        Tier.SMALL,
        latency_ms=8.0,
        cost_per_1k=1.0,
        description="all-MiniLM-L6-v2, 384-d unit vectors, mean pooled",
    ),
    ModelSpec(
        "sentiment",
        "sentiment",
        Tier.SMALL,
        latency_ms=12.0,
        cost_per_1k=1.2,
        description="VADER + cues + MiniLM prototypes, read by a fitted head: sentiment in [-1, 1]",
    ),
)


def default_catalog() -> ModelCatalog:
    """A fresh catalog of the models the shipped repository serves (each client observes its own latency)."""
    return ModelCatalog(DEFAULT_MODELS)
