"""Which versions of an agent are canaries under a routing policy's weights: shared by the registry (which
counts their outcomes and rolls them back) and the planner (which reports outcomes of canaries only)."""

from __future__ import annotations

from collections.abc import Mapping

from packaging.version import Version

__all__ = ["baseline_version", "canary_versions"]


def baseline_version(weights: Mapping[str, int]) -> str | None:
    """The version with the largest weight (ties: the highest version); None when no version has weight."""
    positive = [(w, Version(v), v) for v, w in weights.items() if w > 0]
    return max(positive)[2] if positive else None


def canary_versions(weights: Mapping[str, int]) -> list[str]:
    """Versions other than the baseline that still receive traffic."""
    baseline = baseline_version(weights)
    return [v for v, w in weights.items() if w > 0 and v != baseline]
