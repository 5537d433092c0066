"""Which agent versions are canaries under a rollback rule: the only ones whose call outcomes the registry counts.

The planner reported every call's outcome, one ReportOutcome each, and the registry dropped all but a canary's:
on a mesh with no canary that was a gRPC call per step for nothing, on both sides of two shared cores. Each
agent's routing policy is read (GetRoutingPolicy) at most once per ``ttl`` seconds; while it is unknown or
stale, outcomes are reported as before, and it is read again in the background. So a canary policy set by an
operator starts being counted within ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agentmesh._canaries import canary_versions
from agentmesh._errors import NotFoundError
from agentmesh._registry_client import RegistryClient

__all__ = ["Canaries"]


class Canaries:
    """Per agent, the versions whose outcomes the registry counts, as its routing policy said lately."""

    def __init__(self, registry: Callable[[], RegistryClient | None], ttl: float) -> None:
        self._registry, self._ttl = registry, ttl
        self._known: dict[tuple[str, str], tuple[float, frozenset[str] | None]] = {}  # None: could not tell
        self._reading: dict[tuple[str, str], asyncio.Task[None]] = {}

    def counted(self, namespace: str, name: str, version: str) -> bool:
        """Whether an outcome of ``namespace/name@version`` should be reported (True while the policy is unknown)."""
        key = (namespace, name)
        known = self._known.get(key)
        if known is None or time.monotonic() - known[0] >= self._ttl:
            self._read(key)
        return known is None or known[1] is None or version in known[1]

    def _read(self, key: tuple[str, str]) -> None:
        registry = self._registry()
        if registry is None or key in self._reading:
            return
        self._reading[key] = asyncio.get_running_loop().create_task(self._fetch(registry, key))

    async def _fetch(self, registry: RegistryClient, key: tuple[str, str]) -> None:
        counted: frozenset[str] | None
        try:
            policy = await registry.get_routing(*key, deadline=2.0)
            counted = frozenset(canary_versions(dict(policy.weights)) if policy.HasField("canary") else ())
        except NotFoundError:
            counted = frozenset()  # no routing policy: no canary
        except Exception:
            counted = None  # the registry cannot say: report everything, ask again after the ttl
        finally:
            self._reading.pop(key, None)
        self._known[key] = (time.monotonic(), counted)

    async def close(self) -> None:
        """Stop the reads in flight."""
        for task in list(self._reading.values()):
            task.cancel()
        await asyncio.gather(*self._reading.values(), return_exceptions=True)
