"""Embedding serving through Triton against the in-process bound of the same model on the same cores.

One run starts the bundled tritonserver with the shipped ``minilm_embedding`` (dynamic batching) and, when
concurrency 1 is measured, ``minilm_embedding_b1`` (the same model and instances with dynamic batching
removed: every request of one text runs alone). Each is driven by callers that embed one text per call
through the SDK's ``InferenceClient`` as agents use it: calls made in the same loop turn share a request
(the client's default, ``merge_concurrent``); ``--one-request-per-call`` sends each call alone, so that
Triton's dynamic batcher does all the batching.

``--bound`` also measures, in the same run, the best in-process ONNX Runtime throughput on these cores with
the same sentences and the very code Triton runs (``Embedder`` from the served ``model.py``: tokenize, pad
each run to its longest text, one onnxruntime session): one process with two threads, and two processes
with one thread each at once, at batch sizes 1 to 32. The bound is the best of these. Bound points and
served points are interleaved in ``--rounds`` slices, so background load on a shared machine hits both.

    .venv/bin/python bench/bench_embeddings.py --bound --concurrency 1 64 [--seconds 9] [--rounds 3] [--write]

Targets (issue 12): at concurrency 64, served throughput >= 90% of the bound with p99 <= 350 ms; at
concurrency 1, p50 <= 1.25x the batch-1 model's. ``--write`` appends this run to the ``## inference``
section of bench/RESULTS.md. The exit status is 0 when every measured target held.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

import tritonclient.grpc.aio as triton_aio

from agentmesh._settings import Settings
from agentmesh.inference import InferenceClient, LocalTriton, prepare_model_repository

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
MODEL, BATCH1 = "minilm_embedding", "minilm_embedding_b1"
BOUND_BATCHES = (1, 2, 4, 8, 16, 32)
# Bound layouts: (label, processes, onnxruntime intra-op threads per process).
LAYOUTS = (("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1))
THROUGHPUT_TARGET, P99_TARGET_MS, C1_TARGET = 0.90, 350.0, 1.25
_TICKS = os.sysconf("SC_CLK_TCK")


# --- the in-process bound -------------------------------------------------------------------------------


def load_model_module(folder: Path) -> ModuleType:
    """The served ``model.py`` (its ``Embedder`` needs no Triton)."""
    spec = importlib.util.spec_from_file_location("minilm_embedding_model", folder / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bound_worker(folder: str, threads: int, parameters: dict[str, int], connection: Connection) -> None:
    """A process holding one onnxruntime session; on ``(batch, split, seconds, start_at)`` it embeds batches
    of the bench's sentences from ``start_at`` (monotonic clock) for ``seconds`` and replies ``(sentences,
    started, ended, cpu_seconds)``. ``split``: ``model.py``'s runs (``parameters``, as served), else one run per batch
    padded to its longest text. ``None`` ends it.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    embedder = load_model_module(Path(folder)).Embedder(folder, threads=threads, **parameters)
    embedder.embed(SENTENCES * 4)  # warm-up: allocations for the largest batch
    offset = 0
    connection.send("ready")
    while (message := connection.recv()) is not None:
        batch, split, seconds, start_at = message
        embedder.run_overhead_tokens = parameters["run_overhead_tokens"] if split else 1 << 30
        time.sleep(max(0.0, start_at - time.monotonic()))
        started, cpu = time.monotonic(), time.process_time()
        count = 0
        while time.monotonic() < start_at + seconds:
            embedder.embed([SENTENCES[(offset + k) % len(SENTENCES)] for k in range(batch)])
            offset += batch
            count += batch
        connection.send((count, started, time.monotonic(), time.process_time() - cpu))


@dataclass
class BoundPoint:
    layout: str
    batch: int
    split: bool  # runs as model.py splits them (as served); else one run per batch, padded to its longest
    sentences: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds of the worker processes

    @property
    def cpu_ms(self) -> float:
        """CPU ms per sentence."""
        return self.cpu / self.sentences * 1000 if self.sentences else 0.0

    @property
    def sentences_per_s(self) -> float:
        return self.sentences / self.seconds if self.seconds else 0.0


class Bound:
    """Worker processes for every layout, started once and idle while Triton is measured."""

    def __init__(self, folder: Path, parameters: dict[str, int]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: dict[str, list[Connection]] = {}
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for label, processes, threads in LAYOUTS:
            for _ in range(processes):
                parent, child = context.Pipe()
                process = context.Process(
                    target=bound_worker, args=(str(folder), threads, parameters, child), daemon=True
                )
                process.start()
                self.processes.append(process)
                self.pipes.setdefault(label, []).append(parent)
        for pipes in self.pipes.values():
            for pipe in pipes:
                assert pipe.recv() == "ready"
        self.points = [
            BoundPoint(label, batch, split)
            for label, _, _ in LAYOUTS
            for batch in BOUND_BATCHES
            for split in ((False,) if batch == 1 else (False, True))
        ]

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def measure(self, point: BoundPoint, seconds: float) -> None:
        pipes = self.pipes[point.layout]
        start_at = time.monotonic() + 0.05
        for pipe in pipes:
            pipe.send((point.batch, point.split, seconds, start_at))
        replies = [pipe.recv() for pipe in pipes]
        point.sentences += sum(reply[0] for reply in replies)
        point.seconds += max(reply[2] for reply in replies) - min(reply[1] for reply in replies)
        point.cpu += sum(reply[3] for reply in replies)

    def best(self) -> BoundPoint:
        return max(self.points, key=lambda p: p.sentences_per_s)

    def close(self) -> None:
        for pipes in self.pipes.values():
            for pipe in pipes:
                pipe.send(None)
        for process in self.processes:
            process.join(10)


# --- served through Triton ------------------------------------------------------------------------------


@dataclass
class Served:
    model: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0  # tritonserver and this model's stubs
    tritonserver_cpu: float = 0.0  # of which the tritonserver process (the rest: the python stubs)
    client_cpu: float = 0.0
    inferences: int = 0  # Triton's counters: texts and model executions while measured
    executions: int = 0
    batches: Counter[int] = field(default_factory=Counter)  # executions by batch size while measured

    @property
    def sentences_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def server_cpu_ms(self) -> float:
        """CPU ms of tritonserver and this model's stubs per sentence."""
        return self.server_cpu / len(self.latencies) * 1000 if self.latencies else 0.0

    @property
    def tritonserver_cpu_ms(self) -> float:
        """CPU ms of the tritonserver process per sentence (its gRPC frontend and scheduler)."""
        return self.tritonserver_cpu / len(self.latencies) * 1000 if self.latencies else 0.0

    @property
    def client_cpu_ms(self) -> float:
        """CPU ms of the calling (bench) process per sentence."""
        return self.client_cpu / len(self.latencies) * 1000 if self.latencies else 0.0


def _proc_stat(pid: str) -> list[str] | None:
    try:
        return (Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def server_cpu_seconds(triton: LocalTriton, model: str) -> tuple[float, float]:
    """CPU seconds used so far by tritonserver and the stub processes of ``model``, and by tritonserver
    alone (Linux /proc).
    """
    total = server = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (fields := _proc_stat(entry.name)) is None:
            continue
        if int(fields[2]) != triton.pid:  # process group: LocalTriton starts its own session
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(entry.name) == triton.pid or f"/{model}/1/model.py".encode() in command:
            total += int(fields[11]) + int(fields[12])
            if int(entry.name) == triton.pid:
                server += int(fields[11]) + int(fields[12])
    return total / _TICKS, server / _TICKS


def make_repository(home: Path, target: Path, max_batch: int | None = None) -> None:
    """The shipped repository plus a batch-size-1 twin of minilm_embedding; ``max_batch`` overrides the
    served model's max_batch_size (to compare batch caps; the sentiment model is not loaded here).
    """
    prepare_model_repository(home, target=target)
    if max_batch is not None:
        shipped = target / MODEL / "config.pbtxt"
        config, replaced = re.subn(
            r"(?m)^max_batch_size: \d+$", f"max_batch_size: {max_batch}", shipped.read_text()
        )
        assert replaced == 1, "max_batch_size not found"
        shipped.write_text(config)
    twin = target / BATCH1
    shutil.copytree(target / MODEL, twin)
    config = (twin / "config.pbtxt").read_text()
    config = config.replace(f'name: "{MODEL}"', f'name: "{BATCH1}"')
    config, removed = re.subn(r"dynamic_batching \{.*?\n\}\n", "", config, flags=re.S)
    assert removed == 1, "dynamic_batching block not found"
    (twin / "config.pbtxt").write_text(config)


def served_parameters(folder: Path) -> dict[str, int]:
    """The served model's run-splitting parameters (``Embedder`` keyword arguments) from its config."""
    config = (folder.parent / "config.pbtxt").read_text()
    found = dict(re.findall(r'key: "(\w+)" value: \{ string_value: "(\d+)" \}', config))
    return {key: int(found[key]) for key in ("session_batch", "run_overhead_tokens", "max_tokens")}


async def execution_counts(stats: Any, model: str) -> tuple[int, int, Counter[int]]:
    """Triton's inference_count, execution_count and executions by batch size of ``model`` so far."""
    found = (await stats.get_inference_statistics(model, as_json=True))["model_stats"][0]
    batches = Counter(
        {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in found.get("batch_stats", [])}
    )
    return int(found.get("inference_count", 0)), int(found.get("execution_count", 0)), batches


def in_process_cost_ms(bound: Bound, batches: Counter[int]) -> float | None:
    """CPU ms per sentence that ``Embedder`` took in-process in this run (the bound's two one-thread
    processes, runs split as served) at the batch sizes Triton ran, ``batches`` (executions by size),
    interpolated between the measured sizes: what the stubs' model work costs without serving.
    """
    label = LAYOUTS[1][0]
    measured = {p.batch: p.cpu_ms for p in bound.points if p.layout == label and (p.split or p.batch == 1)}
    sizes = sorted(measured)
    sentences = sum(size * count for size, count in batches.items())
    if not sentences or not all(measured.values()):
        return None
    total = 0.0
    for size, count in batches.items():
        upper = next((s for s in sizes if s >= size), sizes[-1])
        lower = max((s for s in sizes if s <= size), default=sizes[0])
        share = 0.0 if upper == lower else (size - lower) / (upper - lower)
        total += size * count * (measured[lower] + share * (measured[upper] - measured[lower]))
    return total / sentences


async def drive(client: InferenceClient, point: Served, seconds: float, *, record: bool = True) -> None:
    """``point.concurrency`` callers embedding one sentence per call for ``seconds``; with ``record``,
    their latencies and the wall time go into ``point`` (without: a warm-up that fills the pipeline).
    """
    stop_at = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        index = offset
        while time.perf_counter() < stop_at:
            text = SENTENCES[index % len(SENTENCES)]
            index += 1
            started = time.perf_counter()
            await client.embed([text], model=point.model)
            if record:
                point.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(point.concurrency)))
    if record:
        point.seconds += time.perf_counter() - started


# --- load on the machine --------------------------------------------------------------------------------


def _machine_busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


def _own_cpu_seconds(pids: set[int], group: int | None) -> float:
    """CPU seconds of this bench: its own process, the bound workers, tritonserver and its stubs."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (fields := _proc_stat(entry.name)) is None:
            continue
        if int(entry.name) in pids or (group is not None and int(fields[2]) == group):
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


@dataclass
class Load:
    """The 1-minute load average sampled each second, and the CPU other work used meanwhile."""

    samples: list[float] = field(default_factory=list)
    others_cores: float = 0.0

    @property
    def text(self) -> str:
        return (
            f"load average {statistics.mean(self.samples):.1f} (max {max(self.samples):.1f}, this bench "
            f"included) on {os.cpu_count()} cores; other work used {self.others_cores:.1f} cores on average"
        )


@contextmanager
def watch_load(own: dict[str, set[int] | int | None]) -> Iterator[Load]:
    load = Load()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            load.samples.append(os.getloadavg()[0])
            stop.wait(1.0)

    def own_now() -> float:
        pids = own["pids"]
        group = own["group"]
        return _own_cpu_seconds(
            pids if isinstance(pids, set) else set(), group if isinstance(group, int) else None
        )

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, busy, mine = time.monotonic(), _machine_busy_seconds(), own_now()
    try:
        yield load
    finally:
        # Processes that ended meanwhile drop out of both readings; the workers and Triton are still up here.
        elapsed = time.monotonic() - wall
        load.others_cores = max(0.0, (_machine_busy_seconds() - busy) - (own_now() - mine)) / elapsed
        stop.set()
        sampler.join()


# --- report ---------------------------------------------------------------------------------------------


def report(
    bound: Bound | None, served: dict[tuple[str, int], Served], load: Load, command: str
) -> tuple[str, bool]:
    """This run's Markdown block for RESULTS.md and whether every measured target held."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"Run {stamp}: `{command}`; {load.text}.", ""]
    verdicts: list[bool] = []
    if bound is not None:
        lines += [
            "In-process bound, sentences/s: one onnxruntime run per batch padded to its longest text / the "
            "batch split into runs as `model.py` serves it:",
            "",
            "| layout | " + " | ".join(f"batch {b}" for b in BOUND_BATCHES) + " |",
            "|---|" + "---:|" * len(BOUND_BATCHES),
        ]
        for label, _, _ in LAYOUTS:
            cells = []
            for batch in BOUND_BATCHES:
                points = [p for p in bound.points if p.layout == label and p.batch == batch]
                cells.append(" / ".join(f"{p.sentences_per_s:.0f}" for p in points))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        best = bound.best()
        lines += [
            "",
            f"Bound: **{best.sentences_per_s:.0f} sentences/s** ({best.layout}, batch {best.batch}, "
            f"{'split as served' if best.split else 'one run per batch'}; {best.cpu_ms:.2f} CPU ms/sentence).",
            "",
        ]
    lines += [
        "| model | concurrency | sent/s | p50 ms | p99 ms | mean batch | CPU ms/sentence (server + client) "
        "| of which tritonserver |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in served.values():
        lines.append(
            f"| {point.model} | {point.concurrency} | {point.sentences_per_s:.0f} | {point.p50_ms:.1f} "
            f"| {point.percentile_ms(0.99):.1f} | {point.inferences / max(1, point.executions):.1f} "
            f"| {point.server_cpu_ms:.2f} + {point.client_cpu_ms:.2f} | {point.tritonserver_cpu_ms:.2f} |"
        )
    lines.append("")
    c64 = served.get((MODEL, 64))
    if c64 is not None:
        p99 = c64.percentile_ms(0.99)
        sentences = sum(size * count for size, count in c64.batches.items()) or 1
        shares = [
            sum(size * count for size, count in c64.batches.items() if low <= size <= high) / sentences
            for low, high in ((1, 4), (5, 16), (17, 31), (32, 1 << 30))
        ]
        mix = in_process_cost_ms(bound, c64.batches) if bound is not None else None
        lines.append(
            "- Concurrency 64, batches Triton ran (share of sentences in batches of 1-4 / 5-16 / 17-31 / 32+ "
            "texts): "
            + " / ".join(f"{share:.0%}" for share in shares)
            + ". Not a target: "
            + (
                f"in-process, `Embedder` costs {mix:.2f} CPU ms/sentence at this batch mix (the bound's "
                f"one-thread points); served spends {c64.server_cpu_ms - c64.tritonserver_cpu_ms:.2f} in the "
                f"stubs, {c64.tritonserver_cpu_ms:.2f} in tritonserver and {c64.client_cpu_ms:.2f} in the client."
                if mix is not None
                else f"served spends {c64.server_cpu_ms - c64.tritonserver_cpu_ms:.2f} CPU ms/sentence in the "
                f"stubs, {c64.tritonserver_cpu_ms:.2f} in tritonserver and {c64.client_cpu_ms:.2f} in the client."
            )
        )
        if bound is not None:
            ratio = c64.sentences_per_s / bound.best().sentences_per_s
            verdicts.append(ratio >= THROUGHPUT_TARGET)
            lines.append(
                f"- Concurrency 64: served {c64.sentences_per_s:.0f}/s = **{ratio:.0%} of the bound** (target >= "
                f"{THROUGHPUT_TARGET:.0%}): {'met' if verdicts[-1] else 'NOT met'}. Not a target, read beside it "
                f"when other work shares the cores: per CPU ms, served (server + client) is "
                f"{bound.best().cpu_ms / (c64.server_cpu_ms + c64.client_cpu_ms):.0%} as efficient as the bound."
            )
        verdicts.append(p99 <= P99_TARGET_MS)
        lines.append(
            f"- Concurrency 64: **p99 {p99:.0f} ms** (target <= {P99_TARGET_MS:.0f} ms): "
            f"{'met' if verdicts[-1] else 'NOT met'}."
        )
    one, alone = served.get((MODEL, 1)), served.get((BATCH1, 1))
    if one is not None and alone is not None:
        c1 = one.p50_ms / alone.p50_ms
        verdicts.append(c1 <= C1_TARGET)
        lines.append(
            f"- Concurrency 1: p50 {one.p50_ms:.1f} ms vs batch-1 {alone.p50_ms:.1f} ms = **{c1:.2f}x** (target "
            f"<= {C1_TARGET}x): {'met' if verdicts[-1] else 'NOT met'}."
        )
    passed = all(verdicts)
    lines.append(f"- Targets {'all met' if passed else 'NOT all met'} in this run.")
    return "\n".join(lines) + "\n", passed


def append_to_section(block: str) -> None:
    """Append ``block`` at the end of the ``## inference`` section of RESULTS.md."""
    existing = RESULTS.read_text()
    found = re.search(rf"^{re.escape(SECTION)}\b.*?(?=^## |\Z)", existing, re.S | re.M)
    if found is None:
        RESULTS.write_text(existing.rstrip("\n") + f"\n\n{SECTION}\n\n{block}")
        return
    section = found.group(0).rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(existing[: found.start()] + section + existing[found.end() :])


# --- main -----------------------------------------------------------------------------------------------


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bound", action="store_true", help="measure the in-process bound in the same run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64], help="in-flight requests")
    parser.add_argument("--seconds", type=float, default=9.0, help="measured seconds per served point")
    parser.add_argument("--bound-seconds", type=float, default=1.5, help="measured seconds per bound point")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved slices the seconds are split into")
    parser.add_argument("--max-batch", type=int, help="override the served model's max_batch_size")
    parser.add_argument(
        "--one-request-per-call",
        action="store_true",
        help="turn off the client's merging of concurrent calls (each embed call is its own request)",
    )
    parser.add_argument("--write", action="store_true", help="append this run to bench/RESULTS.md")
    args = parser.parse_args()
    home = Settings.from_env().home.resolve()
    served = {(MODEL, c): Served(MODEL, c) for c in args.concurrency}
    if 1 in args.concurrency:
        served[(BATCH1, 1)] = Served(BATCH1, 1)
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as scratch:
        repository = Path(scratch) / "repository"
        make_repository(home, repository, args.max_batch)
        folder = repository / MODEL / "1"
        bound = Bound(folder, served_parameters(folder)) if args.bound else None
        triton = LocalTriton(
            repository,
            home=home,
            models=sorted({model for model, _ in served}),
            log_file=Path(scratch) / "tritonserver.log",
        )
        own: dict[str, set[int] | int | None] = {"pids": {os.getpid(), *(bound.pids if bound else ())}}
        try:
            async with (
                triton,
                InferenceClient(
                    triton.grpc_url, deadline=60.0, merge_concurrent=not args.one_request_per_call
                ) as client,
            ):
                own["group"] = triton.pid
                stats = triton_aio.InferenceServerClient(triton.grpc_url)
                with watch_load(own) as load:
                    for round_ in range(args.rounds):
                        if bound is not None:
                            for spot in bound.points:
                                await asyncio.to_thread(bound.measure, spot, args.bound_seconds / args.rounds)
                        for point in served.values():
                            await drive(client, point, 0.3, record=False)  # CPU and counters after it
                            before, server_before = server_cpu_seconds(triton, point.model)
                            counted = await execution_counts(stats, point.model)
                            client_before = time.process_time()
                            await drive(client, point, args.seconds / args.rounds)
                            point.client_cpu += time.process_time() - client_before
                            after, server_after = server_cpu_seconds(triton, point.model)
                            point.server_cpu += after - before
                            point.tritonserver_cpu += server_after - server_before
                            inferences, executions, batches = await execution_counts(stats, point.model)
                            point.inferences += inferences - counted[0]
                            point.executions += executions - counted[1]
                            point.batches.update(batches - counted[2])
                        progress = [
                            f"{p.model} c={p.concurrency} {p.sentences_per_s:.0f}/s" for p in served.values()
                        ]
                        if bound:
                            progress.insert(0, f"bound {bound.best().sentences_per_s:.0f}/s")
                        print(f"round {round_ + 1}: " + ", ".join(progress), flush=True)
                await stats.close()
        finally:
            if bound is not None:
                bound.close()
    command = ".venv/bin/python bench/bench_embeddings.py" + "".join(f" {a}" for a in sys.argv[1:])
    block, passed = report(bound, served, load, command)
    print("\n" + block)
    if args.write:
        append_to_section(block)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
