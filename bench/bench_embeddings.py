"""Embedding throughput through Triton: dynamic batching vs the same model at batch size 1.

One run starts the bundled tritonserver with two copies of ``minilm_embedding``: the shipped one (dynamic
batching, max batch 32) and ``minilm_embedding_b1`` (same model, dynamic batching removed, so every request
of one text runs alone). Each is driven at concurrency 1, 8 and 64 with one text per request.

    .venv/bin/python bench/bench_embeddings.py [--seconds 6] [--rounds 3] [--write]

``--write`` replaces the ``## inference`` section of bench/RESULTS.md with this run's table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agentmesh._settings import Settings
from agentmesh.inference import InferenceClient, LocalTriton, prepare_model_repository

CONCURRENCY = (1, 8, 64)
# Support-ticket sentences of typical lengths (8-40 tokens).
SENTENCES = [
    "I want a refund for my last order.",
    "My package never arrived and the tracking page has not changed for a week.",
    "How do I reset my password?",
    "I was charged twice for the same subscription this month, please fix it.",
    "The app crashes every time I open the settings page on my phone.",
    "Can I change the delivery address of an order that has already shipped?",
    "Your support team promised a call back three days ago and nobody called.",
    "Thanks, the replacement works perfectly.",
    "Is there a discount for annual plans or for non-profit organisations?",
    "The invoice shows the wrong company name and VAT number, I need a corrected copy for accounting.",
]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## inference"
MODELS = ("minilm_embedding_b1", "minilm_embedding")


@dataclass
class Run:
    model: str
    concurrency: int
    sentences_per_s: float
    p50_ms: float
    p99_ms: float
    # CPU time of tritonserver + this model's python-backend stubs per sentence: robust to other load.
    server_cpu_ms: float
    # CPU time of this (client) process per sentence.
    client_cpu_ms: float

    @property
    def cpu_bound_sentences_per_s(self) -> float:
        """Throughput if server and client had the machine's cores to themselves (CPU-bound estimate)."""
        return (os.cpu_count() or 1) * 1000.0 / (self.server_cpu_ms + self.client_cpu_ms)


_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(triton: LocalTriton, model: str) -> float:
    """CPU seconds used so far by tritonserver and the stub processes of ``model`` (Linux /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != triton.pid:  # process group: LocalTriton starts its own session
                continue
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if int(entry.name) == triton.pid or f"/{model}/1/model.py".encode() in command:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def make_repository(home: Path, target: Path) -> None:
    """The shipped repository plus a batch-size-1 twin of minilm_embedding."""
    prepare_model_repository(home, target=target)
    twin = target / "minilm_embedding_b1"
    shutil.copytree(target / "minilm_embedding", twin)
    config = (twin / "config.pbtxt").read_text()
    config = config.replace('name: "minilm_embedding"', 'name: "minilm_embedding_b1"')
    config, removed = re.subn(r"dynamic_batching \{[^}]*\}\n", "", config)
    assert removed == 1, "dynamic_batching block not found"
    (twin / "config.pbtxt").write_text(config)


async def drive(
    client: InferenceClient, model: str, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    """``concurrency`` callers embedding one sentence per request for ``seconds`` (after a short warm-up);
    returns the latencies and the measured wall time.
    """
    latencies: list[float] = []
    stop_at = 0.0
    recording = False

    async def caller(offset: int) -> None:
        index = offset
        while time.perf_counter() < stop_at:
            text = SENTENCES[index % len(SENTENCES)]
            index += 1
            started = time.perf_counter()
            await client.embed([text], model=model)
            if recording:
                latencies.append(time.perf_counter() - started)

    stop_at = time.perf_counter() + 0.3  # warm-up: fill the pipeline
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    recording = True
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return latencies, time.perf_counter() - started


async def measure(
    triton: LocalTriton, client: InferenceClient, concurrency: int, seconds: float, rounds: int
) -> list[Run]:
    """Both models at one concurrency, interleaved in ``rounds`` slices so background load hits both alike."""
    latencies: dict[str, list[float]] = {model: [] for model in MODELS}
    elapsed = dict.fromkeys(MODELS, 0.0)
    cpu = dict.fromkeys(MODELS, 0.0)
    client_cpu = dict.fromkeys(MODELS, 0.0)
    for _ in range(rounds):
        for model in MODELS:
            before, client_before = server_cpu_seconds(triton, model), time.process_time()
            measured, wall = await drive(client, model, concurrency, seconds / rounds)
            cpu[model] += server_cpu_seconds(triton, model) - before
            client_cpu[model] += time.process_time() - client_before
            latencies[model] += measured
            elapsed[model] += wall
    runs = []
    for model in MODELS:
        ordered = sorted(latencies[model])
        runs.append(
            Run(
                model=model,
                concurrency=concurrency,
                sentences_per_s=len(ordered) / elapsed[model],
                p50_ms=statistics.median(ordered) * 1000,
                p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                # The warm-up's sentences are not counted, so this slightly overstates the cost of both.
                server_cpu_ms=cpu[model] / len(ordered) * 1000,
                client_cpu_ms=client_cpu[model] / len(ordered) * 1000,
            )
        )
    return runs


def report(runs: list[Run], command: str) -> tuple[str, bool]:
    """The Markdown section for RESULTS.md and whether the targets were met."""
    by = {(r.model, r.concurrency): r for r in runs}
    lines = [
        "| concurrency | batch-1 sent/s | batch-1 p50 ms | batch-1 p99 ms | dynamic sent/s | dynamic p50 ms "
        "| dynamic p99 ms | throughput ratio | server+client CPU ms/sentence (batch-1 / dynamic) "
        "| CPU-bound sent/s (batch-1 / dynamic, ratio) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: dict[int, float] = {}
    for c in CONCURRENCY:
        one, dyn = by[(MODELS[0], c)], by[(MODELS[1], c)]
        ratios[c] = dyn.sentences_per_s / one.sentences_per_s
        cpu_ratio = dyn.cpu_bound_sentences_per_s / one.cpu_bound_sentences_per_s
        lines.append(
            f"| {c} | {one.sentences_per_s:.0f} | {one.p50_ms:.1f} | {one.p99_ms:.1f} | {dyn.sentences_per_s:.0f} "
            f"| {dyn.p50_ms:.1f} | {dyn.p99_ms:.1f} | {ratios[c]:.2f}x "
            f"| {one.server_cpu_ms:.2f}+{one.client_cpu_ms:.2f} / {dyn.server_cpu_ms:.2f}+{dyn.client_cpu_ms:.2f} "
            f"| {one.cpu_bound_sentences_per_s:.0f} / {dyn.cpu_bound_sentences_per_s:.0f}, {cpu_ratio:.2f}x |"
        )
    best = max(CONCURRENCY, key=lambda c: ratios[c])
    best_p99 = by[(MODELS[1], best)].p99_ms
    c1 = by[(MODELS[1], 1)].p50_ms / by[(MODELS[0], 1)].p50_ms
    passed = ratios[best] >= 1.6 and best_p99 <= 350 and c1 <= 1.25
    lines += [
        "",
        f"- Best measured throughput ratio: **{ratios[best]:.2f}x** at concurrency {best}, dynamic p99 "
        f"{best_p99:.0f} ms (target >= 1.6x with p99 <= 350 ms).",
        f"- Concurrency 1 latency, dynamic / batch-1 p50: **{c1:.2f}x** (target <= 1.25x).",
        f"- Targets {'met' if passed else 'NOT met'} in this run; load average during the run "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
    ]
    body = "\n".join(lines)
    text = (
        f"{SECTION} (Triton embeddings: dynamic batching vs batch size 1)\n\n"
        "MiniLM (all-MiniLM-L6-v2, ONNX on onnxruntime in the python backend, two single-thread CPU instances "
        "per model) on the bundled tritonserver; one sentence per request through "
        "`agentmesh.inference.InferenceClient` in the same machine. `minilm_embedding_b1` is the same model "
        "and instances with dynamic batching removed. CPU columns come from /proc (tritonserver + the model's "
        "stubs, and the client process); the CPU-bound column is cores x 1000 / CPU ms per sentence, i.e. the "
        "throughput with the machine to ourselves. When other work shares the cores, measured throughput follows "
        "the CPU share the scheduler grants (per thread: the batch-1 path spreads over more threads), so read "
        "the CPU-bound ratio as the batching gain and the measured one as this run's.\n\n"
        f"Command: `{command}`\n\n{body}\n"
    )
    return text, passed


def write_section(text: str) -> None:
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\b.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text + "\n", existing)
    else:
        updated = existing.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(updated)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="measured seconds per model and concurrency"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved slices the seconds are split into")
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    home = Settings.from_env().home.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as scratch:
        repository = Path(scratch) / "repository"
        make_repository(home, repository)
        triton = LocalTriton(
            repository,
            home=home,
            models=["minilm_embedding", "minilm_embedding_b1"],
            log_file=Path(scratch) / "tritonserver.log",
        )
        runs: list[Run] = []
        async with triton, InferenceClient(triton.grpc_url, deadline=30.0) as client:
            for c in CONCURRENCY:
                for run in await measure(triton, client, c, args.seconds, args.rounds):
                    print(
                        f"{run.model:22s} c={c:<3d} {run.sentences_per_s:7.1f} sent/s  "
                        f"p50 {run.p50_ms:7.1f} ms  p99 {run.p99_ms:7.1f} ms  CPU ms/sentence server {run.server_cpu_ms:5.2f} "
                        f"client {run.client_cpu_ms:4.2f}",
                        flush=True,
                    )
                    runs.append(run)
    command = ".venv/bin/python bench/bench_embeddings.py" + "".join(f" {a}" for a in sys.argv[1:])
    text, passed = report(runs, command)
    print("\n" + text)
    if args.write:
        write_section(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
