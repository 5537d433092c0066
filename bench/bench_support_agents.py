"""The customer-service agents on the local Triton: one support ticket end to end, and the responder's cache.

Figures (all in one run, against the local bundled Triton on CPU, agents in-process so only model work and
agent logic are measured; gRPC overhead is bench_agent_invoke.py's figure):

1. responder.draft_reply p50 with the reusable-sentence embedding cache warm vs. cold (the baseline: the
   cache cleared before every call, i.e. every article sentence embedded again, as without the cache);
2. the support playbook per ticket (triage, kb-search and crm concurrently, then responder, then
   quality-check) at 1 and 8 tickets in flight: tickets/s, p50 and p99, the ratio against 1 in flight.

    .venv/bin/python bench/bench_support_agents.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from agentmesh._settings import Settings
from agentmesh.agent import SkillContext
from agentmesh.agents._support import Ticket
from agentmesh.agents.crm import CrmAgent, LookupInput
from agentmesh.agents.examples import ExampleTicket, load_tickets
from agentmesh.agents.kb_search import KbSearchAgent, SearchInput
from agentmesh.agents.quality_check import CheckInput, QualityCheckAgent
from agentmesh.agents.responder import DraftInput, ResponderAgent
from agentmesh.agents.triage import TriageAgent
from agentmesh.inference import LocalTriton, prepare_model_repository


def _ctx(skill: str) -> SkillContext:
    return SkillContext(agent_name="bench", skill=skill)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Playbook:
    """The six agents in-process, running the support playbook on one ticket."""

    def __init__(self, settings: Settings) -> None:
        self.triage = TriageAgent(settings)
        self.kb = KbSearchAgent(settings)
        self.crm = CrmAgent(settings)
        self.responder = ResponderAgent(settings)
        self.review = QualityCheckAgent(settings)
        self.agents = (self.triage, self.kb, self.crm, self.responder, self.review)

    async def start(self) -> None:
        await asyncio.gather(*(agent.startup() for agent in self.agents))

    async def wait_ready(self, within: float = 120.0) -> None:
        """Poll every agent's readiness (Triton reachable, prototypes and knowledge base embedded)."""
        deadline = time.monotonic() + within
        while not all(await asyncio.gather(*(agent.ready() for agent in self.agents))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"agents not ready after {within:.0f} s")
            await asyncio.sleep(0.2)  # poll interval

    async def stop(self) -> None:
        await asyncio.gather(*(agent.shutdown() for agent in self.agents))

    async def draft_input(self, example: ExampleTicket) -> DraftInput:
        ticket = Ticket(subject=example.subject, text=example.text)
        triaged, found, customer = await asyncio.gather(
            self.triage.classify_ticket(ticket, _ctx("classify_ticket")),
            self.kb.search_articles(SearchInput(query=ticket.as_text()), _ctx("search_articles")),
            self.crm.lookup_customer(LookupInput(email=example.email), _ctx("lookup_customer")),
        )
        return DraftInput(
            ticket=ticket,
            intent=triaged.intent,
            articles=found.articles,
            customer=customer.customer.model_dump() if customer.customer else None,
        )

    async def run(self, example: ExampleTicket) -> list[str]:
        """The playbook on one ticket; the review's reasons (empty when the draft passed)."""
        request = await self.draft_input(example)
        draft = await self.responder.draft_reply(request, _ctx("draft_reply"))
        verdict = await self.review.check_reply(
            CheckInput(
                ticket=request.ticket, reply=draft.reply, citations=draft.citations, articles=request.articles
            ),
            _ctx("check_reply"),
        )
        return [f"{example.id}: {reason}" for reason in verdict.reasons]


async def _draft_latencies(
    playbook: Playbook, requests: list[DraftInput], *, cold: bool, rounds: int
) -> list[float]:
    latencies = []
    for _ in range(rounds):
        for request in requests:
            if cold:
                playbook.responder._vectors.clear()  # the baseline: no reuse of article-sentence embeddings
            started = time.perf_counter()
            await playbook.responder.draft_reply(request, _ctx("draft_reply"))
            latencies.append(time.perf_counter() - started)
    return latencies


async def _pipeline(
    playbook: Playbook, tickets: list[ExampleTicket], in_flight: int, rounds: int
) -> tuple[float, list[float]]:
    queue = [t for _ in range(rounds) for t in tickets]
    latencies: list[float] = []
    failures: list[str] = []

    async def worker() -> None:
        while queue:
            ticket = queue.pop()
            started = time.perf_counter()
            failures.extend(await playbook.run(ticket))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    if failures:  # a fast wrong answer is no result
        raise SystemExit("drafts failed review:\n" + "\n".join(failures[:10]))
    return len(latencies) / elapsed, latencies


async def main(rounds: int) -> None:
    home = Settings.from_env().home.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-support-") as scratch:
        # A private copy of the model repository: other processes may be preparing the shared one.
        repository = prepare_model_repository(home, target=Path(scratch) / "model_repository")
        async with LocalTriton(repository, home=home, log_file=Path(scratch) / "triton.log") as triton:
            settings = Settings.from_env(home=Path(scratch), triton_url=triton.grpc_url)
            playbook = Playbook(settings)
            await playbook.start()
            await playbook.wait_ready()
            try:
                tickets = load_tickets()
                requests = [await playbook.draft_input(t) for t in tickets]
                await _draft_latencies(
                    playbook, requests, cold=False, rounds=1
                )  # warm up (and fill the cache)
                cold = await _draft_latencies(playbook, requests, cold=True, rounds=rounds)
                warm = await _draft_latencies(playbook, requests, cold=False, rounds=rounds)
                print("| responder.draft_reply | p50 ms | p99 ms |\n|---|---|---|")
                for name, values in (("cache cleared (baseline)", cold), ("cache warm", warm)):
                    print(
                        f"| {name} | {statistics.median(values) * 1e3:.1f} | {_percentile(values, 0.99) * 1e3:.1f} |"
                    )
                print(f"\nwarm / cold p50: {statistics.median(warm) / statistics.median(cold):.2f}\n")
                print(
                    "| tickets in flight | tickets/s | p50 ms | p99 ms | throughput vs 1 |\n|---|---|---|---|---|"
                )
                base = 0.0
                for in_flight in (1, 8):
                    rate, latencies = await _pipeline(playbook, tickets, in_flight, rounds)
                    base = base or rate
                    print(
                        f"| {in_flight} | {rate:.1f} | {statistics.median(latencies) * 1e3:.0f} | "
                        f"{_percentile(latencies, 0.99) * 1e3:.0f} | {rate / base:.2f}x |"
                    )
            finally:
                await playbook.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 12 example tickets per figure")
    asyncio.run(main(parser.parse_args().rounds))
