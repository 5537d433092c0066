"""Discovery with hostile visibility patterns at 10,000 agents whose names are long runs of 'a' (issue 10).

    .venv/bin/python bench/bench_visibility.py [--agents 10000] [--queries 60]

In process, 1 in flight, the domain path of DiscoverAgents (request validation, visibility, discovery; no
transport): a baseline with no visibility scope; a hostile pattern already seen (memoised); and never-seen hostile
patterns (each query a new one: RE2 scans every name on the worker thread within the budget, or refuses).
Meanwhile a ticker task on the same event loop records its longest stall (what a health check would wait).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HOSTILE = [r"(a|aa)+b", r"(a+)+$", r".*a.{20}", r"(.*a){12}[0-9]{3}", r"([a-z/]+)+1"]


def _index(agents: int):  # type: ignore[no-untyped-def]
    from agentmesh.services.registry.discovery import AgentIndex
    from agentmesh.services.registry.model import InstanceRecord, VersionRecord
    from agentmesh.services.registry.validation import parse_version
    from agentmesh.v1 import agent_pb2
    from tests.fixtures.registry import make_card

    index = AgentIndex()
    for i in range(agents):
        card = make_card("a" * (40 + i % 18) + f"{i:05d}", namespace="a" * (3 + i % 61))
        index.put_version(VersionRecord(i + 1, card, parse_version(card.version), f"h{i}"))
        index.put_instance(
            InstanceRecord(
                f"i{i}",
                f"l{i}",
                i + 1,
                card.endpoint,
                agent_pb2.SERVING_STATE_SERVING,
                0.0,
                60.0,
                "",
                0.0,
                0.0,
            )
        )
    index.prepare()
    return index


def _worst(stalls: list[float]) -> str:
    ordered = sorted(stalls)
    return f"{ordered[int(len(ordered) * 0.99)] * 1000:.1f} / {ordered[-1] * 1000:.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=60)
    args = parser.parse_args()

    from agentmesh._errors import InvalidArgumentError
    from agentmesh.services.registry.servicer import discovery_query
    from agentmesh.v1 import registry_pb2

    index = _index(args.agents)
    stalls: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls.append(now - last - 0.001)
            last = now

    async def discover(patterns: list[str]) -> tuple[float, bool]:
        request = registry_pb2.DiscoverAgentsRequest(
            visibility=registry_pb2.VisibilityScope(patterns=patterns),
            characteristics=registry_pb2.CharacteristicsScope(skill="classify_ticket"),
        )
        started = time.perf_counter()
        try:
            query = discovery_query(request)
            await index.prepare_visibility(query)
            index.discover(query, {})
            answered = True
        except InvalidArgumentError:
            answered = False
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.002)  # let the ticker (and anything else on the loop) run between queries
        return elapsed, answered

    def line(name: str, samples: list[tuple[float, bool]], baseline: float) -> str:
        times = sorted(t for t, _ in samples)
        p50, p99 = statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]
        refused = sum(1 for _, ok in samples if not ok)
        return f"| {name} | {p50 * 1000:.2f} | {p99 * 1000:.2f} | {p50 / baseline:.1f}x | {refused}/{len(samples)} |"

    task = asyncio.create_task(ticker())
    for _ in range(20):
        await discover([])
    stalls.clear()
    base = [await discover([]) for _ in range(args.queries)]
    base_stall = _worst(stalls)
    baseline = statistics.median(t for t, _ in base)
    for pattern in HOSTILE:  # scanned once (a refused scan goes on with the next request)
        for _ in range(50):
            if (await discover([pattern]))[1]:
                break
    warm = [await discover([HOSTILE[i % len(HOSTILE)]]) for i in range(args.queries)]
    stalls.clear()
    cold = [await discover([f"{HOSTILE[i % len(HOSTILE)]}|z{i}"]) for i in range(args.queries)]
    cold_stall = _worst(stalls)
    stop.set()
    await task
    print(f"{args.agents} agents, {args.queries} queries each, 1 in flight")
    print("| query | p50 ms | p99 ms | p50 / baseline | refused |")
    print("|---|---|---|---|---|")
    print(line("no visibility scope (baseline)", base, baseline))
    print(line("hostile pattern, seen before (memoised)", warm, baseline))
    print(line("hostile pattern, never seen (RE2 scan on the worker)", cold, baseline))
    print(
        f"event-loop stall p99 / max: {base_stall} during the baseline queries, {cold_stall} during the never-seen"
    )


if __name__ == "__main__":
    asyncio.run(main())
