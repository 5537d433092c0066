"""Unary calls through the mesh's full interceptor stack vs bare grpc.aio with mTLS, in the same run.

Full stack = MeshServer (mTLS, SPIFFE authz, tracing at the default 1% parent-based sampling, Prometheus
metrics) called through ``create_channel`` (deadline, breaker, retries, tracing). Each server variant runs in
its own process, the load client in another; rounds are interleaved (variant order rotates each round) and
ratios are paired per round, then the median is reported.

    .venv/bin/python bench/bench_interceptors.py [--rounds 5] [--calls 1500] [--seconds 3] [--inflight 64]

Variants: ``bare`` (grpc.aio + mTLS, default asyncio loop), ``bare-uvloop``, ``full`` (the mesh runtime as
shipped: ``agentmesh.telemetry.run`` puts the server on uvloop), ``full-asyncio`` (same stack, default loop),
``full-always-on`` (ALWAYS_ON sampling on both sides, spans batched to an exporter that drops them),
``stock-otel`` (bare grpc.aio + mTLS on uvloop with only the stock opentelemetry-instrumentation-grpc aio server
and client interceptors, 1% parent-based sampling as the mesh's default: what the lean tracing replaces). The
load client runs on uvloop for every variant.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

VARIANTS = ("bare", "bare-uvloop", "full", "full-asyncio", "full-always-on", "stock-otel")
METHOD = "/agentmesh.v1.RegistryService/GetAgent"
SERVER = ("service", "bench-server")
CLIENT = ("client", "bench")
_TICKS = os.sysconf("SC_CLK_TCK")


def _settings(home: Path, **changes: Any) -> Any:
    from agentmesh._settings import Settings

    # No registry here: servers do not follow a revocation set (nothing to reach, nothing to retry).
    return Settings(home=home, registry_address="", **changes)


def _stock_provider() -> Any:
    """The mesh's default sampling (1%, parent-based) for the stock instrumentation; no exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))


def _always_on_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    class DropExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    return provider


# ---------------------------------------------------------------- server processes


def _serve(variant: str, home: Path, ready: Any) -> None:
    """Serve GetAgent for ``variant`` until terminated; report the port through ``ready``."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from agentmesh import telemetry

    use_uvloop = variant in ("bare-uvloop", "full", "full-always-on", "stock-otel")
    if variant.startswith("bare") or variant == "stock-otel":
        main = _serve_bare(home, ready, stock_tracing=variant == "stock-otel")
    else:
        main = _serve_full(variant, home, ready)
    telemetry.run(main, use_uvloop=use_uvloop)


def _registry() -> Any:
    """A RegistryService whose GetAgent answers at once (the other RPCs are the generated UNIMPLEMENTED)."""
    from agentmesh.v1 import registry_pb2_grpc

    class Registry(registry_pb2_grpc.RegistryServiceServicer):
        async def GetAgent(self, request: Any, context: Any) -> Any:  # type: ignore[override]
            from agentmesh.v1 import registry_pb2

            return registry_pb2.GetAgentResponse()

    return Registry()


async def _serve_bare(home: Path, ready: Any, *, stock_tracing: bool = False) -> None:
    import grpc

    from agentmesh.security import credential_paths
    from agentmesh.v1 import registry_pb2_grpc

    cert, key, ca = credential_paths(_settings(home), *SERVER).read()
    interceptors = []
    if stock_tracing:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptors.append(aio_server_interceptor(tracer_provider=_stock_provider()))
    server = grpc.aio.server(interceptors=interceptors)
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(_registry(), server)
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    ready.put(port)
    await server.wait_for_termination()


async def _serve_full(variant: str, home: Path, ready: Any) -> None:
    from opentelemetry import trace

    from agentmesh._server import MeshServer, bind
    from agentmesh.v1 import registry_pb2_grpc

    if variant == "full-always-on":
        trace.set_tracer_provider(_always_on_provider())  # configure_tracing keeps an installed SDK provider
    server = MeshServer(
        name=SERVER[1],
        kind=SERVER[0],
        settings=_settings(home, metrics_port=_free_port()),
        port=0,
        services=[
            bind(
                _registry(),
                registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                "agentmesh.v1.RegistryService",
            )
        ],
    )
    await server.start()
    ready.put(server.port)
    await asyncio.Event().wait()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------- load client process


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _channel(variant: str, home: Path, port: int) -> Any:
    import grpc

    from agentmesh import security
    from agentmesh._channel import create_channel

    target = f"127.0.0.1:{port}"
    settings = _settings(home)
    if variant.startswith("bare") or variant == "stock-otel":
        cert, key, ca = security.credential_paths(settings, *CLIENT).read()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        if variant == "stock-otel":
            from opentelemetry.instrumentation.grpc import aio_client_interceptors

            interceptors = aio_client_interceptors(tracer_provider=_stock_provider())
            return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
        return grpc.aio.secure_channel(target, credentials)
    if variant == "full-always-on":
        from agentmesh.resilience import MeshChannel, MeshClientInterceptor, RetryPolicy, breaker_for
        from agentmesh.telemetry import get_tracer

        policy = MeshClientInterceptor(
            tracer=get_tracer(_always_on_provider()),
            breaker=breaker_for(target),
            retry=RetryPolicy(),
            default_deadline=settings.default_deadline,
        )
        return MeshChannel(target, (), security.channel_credentials(settings, *CLIENT), policy)
    return create_channel(target, settings, kind=CLIENT[0], name=CLIENT[1])


async def _measure(
    call: Callable[[Any], Any], server_pid: int, calls: int, seconds: float, inflight: int
) -> dict[str, float]:
    from agentmesh.v1 import registry_pb2

    request = registry_pb2.GetAgentRequest(namespace="bench", name="echo")
    for _ in range(200):  # warm-up: connection, handshake, caches
        await call(request)

    latencies = []
    cpu_server, cpu_client = _cpu_seconds(server_pid), time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        await call(request)
        latencies.append(time.perf_counter() - started)
    server_1 = (_cpu_seconds(server_pid) - cpu_server) / calls
    client_1 = (time.process_time() - cpu_client) / calls

    done = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call(request)
            done += 1

    cpu_server, cpu_client = _cpu_seconds(server_pid), time.process_time()
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "server_cpu_us_1": server_1 * 1e6,
        "client_cpu_us_1": client_1 * 1e6,
        "throughput": done / elapsed,
        "server_cpu_us_n": (_cpu_seconds(server_pid) - cpu_server) / done * 1e6,
        "client_cpu_us_n": (time.process_time() - cpu_client) / done * 1e6,
    }


def _load(home: Path, servers: dict[str, tuple[int, int]], args: argparse.Namespace, out: Any) -> None:
    import uvloop

    async def main() -> None:
        from agentmesh.v1 import registry_pb2_grpc

        channels = {v: _channel(v, home, port) for v, (port, _) in servers.items()}
        stubs = {v: registry_pb2_grpc.RegistryServiceStub(c) for v, c in channels.items()}
        order = list(servers)
        for round_number in range(args.rounds):
            rotated = order[round_number % len(order) :] + order[: round_number % len(order)]
            for variant in rotated:
                figures = await _measure(
                    stubs[variant].GetAgent, servers[variant][1], args.calls, args.seconds, args.inflight
                )
                out.put((round_number, variant, figures))
        for channel in channels.values():
            await channel.close()

    uvloop.run(main())
    out.put(None)


# ---------------------------------------------------------------- orchestration


def _issue_certificates(home: Path) -> None:
    from agentmesh.security import CertificateAuthority

    ca = CertificateAuthority.init(home, "agentmesh.local")
    ca.issue(*SERVER)
    ca.issue(*CLIENT)


def _report(
    results: list[tuple[int, str, dict[str, float]]], variants: Sequence[str], args: argparse.Namespace
) -> str:
    by_round: dict[int, dict[str, dict[str, float]]] = {}
    for round_number, variant, figures in results:
        by_round.setdefault(round_number, {})[variant] = figures

    def median(variant: str, key: str) -> float:
        return statistics.median(r[variant][key] for r in by_round.values())

    def ratio(variant: str, key: str) -> float:
        return statistics.median(r[variant][key] / r["bare"][key] for r in by_round.values())

    def cpu_bound_ratio(variant: str) -> float:
        # The throughput ratio if server and client had a core each: bare's CPU per call over the variant's.
        def cpu(figures: dict[str, float]) -> float:
            return figures["server_cpu_us_n"] + figures["client_cpu_us_n"]

        return statistics.median(cpu(r["bare"]) / cpu(r[variant]) for r in by_round.values())

    lines = [
        f"{args.rounds} rounds, {args.calls} sequential calls for p50, {args.seconds:g} s at {args.inflight} in"
        f" flight; medians over rounds; ratios vs `bare` paired per round. CPU = µs per call (server / client);"
        " CPU-bound ratio = bare's (server + client) CPU per call at 64 in flight over the variant's.",
        "",
        "| variant | p50 @1 (ms) | p99 @1 (ms) | p50 ratio | calls/s @64 | throughput ratio "
        "| CPU-bound ratio | CPU/call @1 | CPU/call @64 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        lines.append(
            f"| {variant} | {median(variant, 'p50_ms'):.3f} | {median(variant, 'p99_ms'):.3f}"
            f" | {ratio(variant, 'p50_ms'):.2f} | {median(variant, 'throughput'):,.0f}"
            f" | {ratio(variant, 'throughput'):.2f} | {cpu_bound_ratio(variant):.2f}"
            f" | {median(variant, 'server_cpu_us_1'):.0f} / {median(variant, 'client_cpu_us_1'):.0f}"
            f" | {median(variant, 'server_cpu_us_n'):.0f} / {median(variant, 'client_cpu_us_n'):.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table for bench/RESULTS.md."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1500, help="sequential calls per round for p50")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per round at --inflight")
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "bare" not in variants or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants must include bare and be among {', '.join(VARIANTS)}")

    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-interceptors-") as tmp:
        home = Path(tmp)
        _issue_certificates(home)
        servers: dict[str, tuple[int, int]] = {}
        processes = []
        try:
            for variant in variants:
                ready = context.Queue()
                process = context.Process(target=_serve, args=(variant, home, ready), daemon=True)
                process.start()
                processes.append(process)
                servers[variant] = (ready.get(timeout=30), process.pid or 0)
            out = context.Queue()
            loader = context.Process(target=_load, args=(home, servers, args, out), daemon=True)
            loader.start()
            processes.append(loader)
            results = []
            while (item := out.get(timeout=600)) is not None:
                results.append(item)
                round_number, variant, figures = item
                print(
                    f"round {round_number} {variant:15} p50 {figures['p50_ms']:.3f} ms"
                    f"  {figures['throughput']:,.0f}/s  server {figures['server_cpu_us_n']:.0f} µs/call",
                    file=sys.stderr,
                )
            loader.join(30)
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
                    process.join(10)
    print(_report(results, variants, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
