"""Registry at 100,000 agent instances in PostgreSQL: discovery latency, heartbeat rate, change propagation.

    .venv/bin/python bench/bench_registry.py [--agents 100000] [--queries 2000] [--heartbeat-seconds 40]
        [--hb-clients 4] [--hb-leases 50] [--hb-inflight 64] [--hb-streams 50] [--hb-seconds 10]
        [--discovery-only]

Stages, all in one run against one throwaway PostgreSQL 15 (started like the test fixture, by importing
``tests.fixtures.postgres``):

1. in-service: the registry domain and servicer in this process (``RegistryServicer.DiscoverAgents`` called
   directly: query validation, filtering, ranking, routing and the response proto, no transport), 1 in
   flight, Q1 (skill + required policies), Q2 (regex visibility + purpose + policy), Q3 (3-6-word intent,
   top 10); and the snapshot load time of 100k cards.
2. heartbeats in-service: 100,000 leases with a 15 s TTL renewed every 10 s (10,000/s, paced) for
   ``--heartbeat-seconds`` while the replica flushes and sweeps against PostgreSQL; then no lease may have
   expired (no EXPIRED event, every instance still discoverable).
3. over mTLS: two registry replicas as separate processes (``agentmesh registry``) on the same database;
   Q1/Q2/Q3 at 1 in flight from this process, in the full and the BASIC view (``view`` on the request),
   against ``grpc.health.v1.Health/Check`` on the same connection (the bare mTLS unary baseline through the
   same server stack); heartbeats over mTLS at 64 in flight against Health/Check at 64 in flight, first from
   this process, then from ``--hb-clients`` client processes (each ``--hb-leases`` leases, ``--hb-seconds`` per
   phase) against one replica, whose CPU per heartbeat and per check is read from ``/proc``: unary Heartbeat
   (``--hb-inflight`` in flight per client), heartbeats streamed over ``StreamHeartbeats`` (``--hb-streams``
   open streams per client, one heartbeat in flight on each, as an agent does; first sharing the client's
   connection, then each stream on its own connection, as separate agents are) and Health/Check.
4. propagation: register / deregister through replica A, poll discovery on replica B until it shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._registry_cards import TRUST_DOMAIN, Vocabulary, bulk_load, cards, query_mix

KINDS = ("Q1", "Q2", "Q3")


class _Report(list[str]):
    """Lines of the result, printed as they come (a long run shows progress)."""

    def append(self, line: str) -> None:
        super().append(line)
        print(line, flush=True)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _ms(value: float) -> str:
    return f"{value * 1000:.3f}"


def _requests(vocab: Vocabulary, count: int, seed: int) -> dict[str, list[Any]]:
    from agentmesh.v1 import registry_pb2

    rng = random.Random(seed)
    out: dict[str, list[Any]] = {}
    for kind in KINDS:
        out[kind] = []
        for _ in range(count):
            q = query_mix(rng, vocab, kind)
            out[kind].append(
                registry_pb2.DiscoverAgentsRequest(
                    visibility=registry_pb2.VisibilityScope(patterns=q.get("patterns", [])),
                    characteristics=registry_pb2.CharacteristicsScope(
                        skill=q.get("skill", ""),
                        purpose=q.get("purpose", ""),
                        required_policies=q.get("required_policies", []),
                        intent=q.get("intent", ""),
                    ),
                    max_results=q.get("max_results", 10),
                )
            )
    return out


async def _timed(call: Callable[[Any], Awaitable[Any]], requests: list[Any]) -> tuple[list[float], int]:
    samples, hits = [], 0
    for request in requests:
        started = time.perf_counter()
        reply = await call(request)
        samples.append(time.perf_counter() - started)
        hits += bool(getattr(reply, "candidates", None))
    return samples, hits


# ---------------------------------------------------------------- stage 1 and 2: in-service


async def in_service(
    url: str,
    settings: Any,
    requests: dict[str, list[Any]],
    lease_ids: list[str],
    args: argparse.Namespace,
    report: list[str],
) -> None:
    from agentmesh.services.registry.registry import Registry
    from agentmesh.services.registry.servicer import RegistryServicer
    from agentmesh.services.registry.store import RegistryStore
    from agentmesh.storage import create_async_engine
    from agentmesh.v1 import agent_pb2

    engine = create_async_engine(url, pool_size=5)
    registry = Registry(RegistryStore(engine), settings)
    started = time.perf_counter()
    await registry.start()
    load_seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.append(
        f"snapshot load of {len(registry.index.instances):,} instances: {load_seconds:.1f} s, max RSS {rss_mb:.0f} MiB"
    )
    servicer = RegistryServicer(registry)

    async def discover(request: Any) -> Any:
        return await servicer.DiscoverAgents(request, None)  # type: ignore[arg-type]

    report.append("")
    report.append("| query (in-service, 1 in flight) | p50 ms | p99 ms | answered with candidates |")
    report.append("|---|---|---|---|")
    results: dict[str, tuple[float, float]] = {}
    for kind in KINDS:
        await _timed(discover, requests[kind][:200])  # warm caches (skill arrays, term arrays, regex memo)
        samples, hits = await _timed(discover, requests[kind])
        p50, p99 = _percentiles(samples)
        results[kind] = (p50, p99)
        report.append(f"| {kind} | {_ms(p50)} | {_ms(p99)} | {hits}/{len(samples)} |")
    # Cold visibility scopes: a pattern never seen before scans the names of its literal prefix once (RE2, on the
    # registry's worker thread, within a per-request budget: a request past it is refused and the next goes on).
    from agentmesh._errors import InvalidArgumentError
    from agentmesh.v1 import registry_pb2

    cold, refused = [], 0
    for index in range(20):
        request = registry_pb2.DiscoverAgentsRequest(
            visibility=registry_pb2.VisibilityScope(patterns=[f"ns-{index:02d}/[a-z]+-0{index % 10}.*"]),
            characteristics=registry_pb2.CharacteristicsScope(required_policies=["pii:allowed"]),
        )
        started = time.perf_counter()
        try:
            await discover(request)
        except InvalidArgumentError:
            refused += 1
        cold.append(time.perf_counter() - started)
    report.append(
        f"| Q2 with a never-seen pattern (first use; memoised after) | {_ms(statistics.median(cold))} | {_ms(max(cold))} | "
        f"refused {refused}/{len(cold)} |"
    )

    if args.discovery_only:
        await registry.stop()
        await engine.dispose()
        return None
    # Heartbeats: every agent every 10 s (TTL 15 s), paced, while the replica flushes and sweeps. The loaded
    # leases are set to expire 20 s from now: without working renewals they would all expire mid-run.
    import sqlalchemy as sa

    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE agent_leases SET expires_at = now() + interval '20 seconds'"))
    caller_of = {i.lease_id: i.registered_by for i in registry.index.instances.values()}
    rate = len(lease_ids) / 10.0
    deadline = time.monotonic() + args.heartbeat_seconds
    sent, behind_max = 0, 0.0
    flush_before = registry.leases.pending
    cpu_before = time.process_time()
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        due = int((time.monotonic() - t0) * rate)
        batch_end = min(due, sent + 2000)
        while sent < batch_end:
            lease = lease_ids[sent % len(lease_ids)]
            await registry.heartbeat(lease, agent_pb2.SERVING_STATE_SERVING, 0.1, caller_of[lease])
            sent += 1
        behind_max = max(behind_max, (due - sent) / rate)
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu_before
    # Let the last batch flush, then check that nothing expired.
    await registry.leases.flush()
    await registry.sync()
    expired = len(lease_ids) - len(registry.index.instances)
    async with engine.connect() as conn:
        expired_events = await conn.scalar(
            sa.text("SELECT count(*) FROM registry_events WHERE event_type = 'EXPIRED'")
        )
        stale = await conn.scalar(sa.text("SELECT count(*) FROM agent_leases WHERE expires_at < now()"))
    # Cost of one flush of 10,000 renewals (one UPDATE ... FROM unnest).
    for lease in lease_ids[:10_000]:
        await registry.heartbeat(lease, agent_pb2.SERVING_STATE_SERVING, 0.1, caller_of[lease])
    started = time.perf_counter()
    await registry.leases.flush()
    flush_ms = (time.perf_counter() - started) * 1000
    # The next stage's replicas must find every agent alive: without this the leases renewed above lapse
    # while they load, their sweep expires all 100k and the over-mTLS queries run against an emptying index.
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE agent_leases SET expires_at = now() + interval '1 hour'"))
    report.append("")
    report.append(
        f"heartbeats in-service: {sent:,} in {elapsed:.1f} s = {sent / elapsed:,.0f}/s sustained (target pace "
        f"{rate:,.0f}/s, never more than {behind_max:.2f} s behind), {cpu / sent * 1e6:.1f} µs CPU each incl. "
        f"flushes; leases wrongly expired: {expired} (EXPIRED events {expired_events}, stale lease rows {stale}); "
        f"one flush of 10,000 renewals: {flush_ms:.0f} ms (pending before run {flush_before})"
    )
    await registry.stop()
    await engine.dispose()
    return None


# ---------------------------------------------------------------- stage 3 and 4: over mTLS, two replicas


async def _negate(check: Awaitable[bool]) -> bool:
    return not await check


async def _until(check: Callable[[], Awaitable[bool]], since: float, within: float = 30.0) -> float:
    """Poll ``check`` every 5 ms; seconds from ``since`` until it held."""
    while time.perf_counter() - since < within:
        if await check():
            return time.perf_counter() - since
        await asyncio.sleep(0.005)
    raise TimeoutError(f"not seen within {within} s")


def _start_replica(
    home: Path, url: str, port: int, log: Path, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTMESH_METRICS_PORT": str(metrics_port),
        "AGENTMESH_HOME": str(home),
        "AGENTMESH_TRUST_DOMAIN": TRUST_DOMAIN,
        "AGENTMESH_DATABASE_URL": url,
        "AGENTMESH_LOG_LEVEL": "WARNING",
        "AGENTMESH_LOG_FORMAT": "text",
        "AGENTMESH_READINESS_INTERVAL": "0.5",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agentmesh.cli", "registry", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _server_seconds(metrics_port: int) -> dict[str, tuple[float, float]]:
    """Per method, (seconds, calls) of OK calls inside the replica (its interceptor and handler), from /metrics."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    totals: dict[str, list[float]] = {}
    for kind, labels, value in re.findall(
        r"^agentmesh_rpc_server_duration_seconds_(sum|count)\{([^}]*)\} (\S+)$", text, re.MULTILINE
    ):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs.get("code") == "OK":
            totals.setdefault(pairs["method"], [0.0, 0.0])[kind == "count"] += float(value)
    return {method: (pair[0], pair[1]) for method, pair in totals.items()}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def over_mtls(
    home: Path,
    url: str,
    settings: Any,
    requests: dict[str, list[Any]],
    report: list[str],
    args: argparse.Namespace,
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agentmesh._channel import create_channel
    from agentmesh._health import wait_until_serving
    from agentmesh._registry_client import RegistryClient
    from agentmesh.security import CertificateAuthority
    from agentmesh.v1 import registry_pb2_grpc

    ca = CertificateAuthority.load(home)
    for kind, name in (("service", "registry"), ("client", "ops"), ("agent", "bench/bench-agent")):
        ca.issue(kind, name)
    ports = [_free_port(), _free_port()]
    metrics_port = _free_port()
    processes = [
        _start_replica(home, url, port, home / f"replica-{i}.log", metrics_port if i == 0 else 0)
        for i, port in enumerate(ports)
    ]
    try:
        channels = [
            create_channel(f"127.0.0.1:{port}", settings, kind="client", name="ops") for port in ports
        ]
        started = time.perf_counter()
        for channel in channels:
            await wait_until_serving(channel, within=300)
        report.append("")
        report.append(
            f"two replica processes SERVING (snapshot loaded) {time.perf_counter() - started:.1f} s after start"
        )
        stub = registry_pb2_grpc.RegistryServiceStub(channels[0])
        health = health_pb2_grpc.HealthStub(channels[0])

        async def check(_: Any) -> Any:
            return await health.Check(health_pb2.HealthCheckRequest(), timeout=10)

        async def discover(request: Any) -> Any:
            return await stub.DiscoverAgents(request, timeout=10)

        from agentmesh.v1 import registry_pb2

        def with_view(request: Any, view: int) -> Any:
            copy = registry_pb2.DiscoverAgentsRequest()
            copy.CopyFrom(request)
            copy.view = view  # type: ignore[assignment]
            return copy

        views = {
            "full card": registry_pb2.INSTANCE_VIEW_UNSPECIFIED,
            "BASIC view": registry_pb2.INSTANCE_VIEW_BASIC,
        }
        await _timed(check, [None] * 300)
        report.append("")
        report.append(
            "| over mTLS, 1 in flight; check, full, basic in interleaved blocks of 50 | p50 ms | p99 ms | p50 minus Health/Check p50 "
            "| answered with candidates | median answer |"
        )
        report.append("|---|---|---|---|---|---|")
        for kind in KINDS:
            batches = {label: [with_view(r, view) for r in requests[kind]] for label, view in views.items()}
            for batch in batches.values():
                await _timed(discover, batch[:200])
            samples: dict[str, list[float]] = {"check": [], **{label: [] for label in batches}}
            hits = dict.fromkeys(batches, 0)
            for start in range(0, len(requests[kind]), 50):
                # Blocks of 50: a call mostly follows one of its own kind (a discovery answer's memory traffic
                # slows the calls right after it, a bare check included), and load drifts hit all three alike.
                samples["check"] += (
                    await _timed(check, [None] * len(batches["full card"][start : start + 50]))
                )[0]
                for label, batch in batches.items():
                    took, hit = await _timed(discover, batch[start : start + 50])
                    samples[label] += took
                    hits[label] += hit
            base50, base99 = _percentiles(samples["check"])
            report.append(f"| {kind}: Health/Check (baseline) | {_ms(base50)} | {_ms(base99)} | - | | |")
            for label, batch in batches.items():
                p50, p99 = _percentiles(samples[label])
                size = statistics.median([(await discover(r)).ByteSize() for r in batch[:50]])
                report.append(
                    f"| {kind}, {label} | {_ms(p50)} | {_ms(p99)} | **+{_ms(p50 - base50)}** | "
                    f"{hits[label]}/{len(batch)} | {size / 1024:.1f} KiB |"
                )

        # Where the time goes: the replica's own /metrics give the mean time of each call inside it (mesh
        # interceptor + handler); the rest of the client's mean is gRPC core, TLS, the wire and the client.
        report.append("")
        report.append(
            "| over mTLS, 500 calls each, means | client mean ms | inside the replica ms | rest (gRPC core, TLS, "
            "client) ms |"
        )
        report.append("|---|---|---|---|")
        phases: list[tuple[str, str, list[Any], Callable[[Any], Awaitable[Any]]]] = [
            ("Health/Check", "Check", [None] * 500, check)
        ]
        for kind in KINDS:
            for label, view in views.items():
                phases.append(
                    (
                        f"{kind}, {label}",
                        "DiscoverAgents",
                        [with_view(r, view) for r in requests[kind][:500]],
                        discover,
                    )
                )
        for label, method, batch, call in phases:
            before = _server_seconds(metrics_port).get(method, (0.0, 0.0))
            took, _ = await _timed(call, batch)
            after = _server_seconds(metrics_port).get(method, (0.0, 0.0))
            inside = (after[0] - before[0]) / max(1.0, after[1] - before[1])
            mean = statistics.fmean(took)
            report.append(f"| {label} | {_ms(mean)} | {_ms(inside)} | {_ms(mean - inside)} |")

        if args.discovery_only:
            for channel in channels:
                await channel.close()
            return
        # Heartbeats over mTLS at 64 in flight vs Health/Check at 64 in flight, same connection.
        agent_card = next(cards(1, seed=99))
        agent_card.name, agent_card.namespace = "bench-agent", "bench"
        agent_card.spiffe_id = f"spiffe://{TRUST_DOMAIN}/agent/bench/bench-agent"
        agent_card.endpoint = "127.0.0.1:7999"
        agent = RegistryClient(settings, kind="agent", name="bench/bench-agent", address=f"127.0.0.1:{ports[0]}")
        lease = (await agent.register(agent_card, lease_ttl=30)).lease.lease_id
        agent_health = health_pb2_grpc.HealthStub(agent.channel)

        async def rate(call: Callable[[], Awaitable[Any]], seconds: float, inflight: int = 64) -> float:
            done = 0
            stop_at = time.monotonic() + seconds

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < stop_at:
                    await call()
                    done += 1

            t0 = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(inflight)))
            return done / (time.monotonic() - t0)

        hb_rate = await rate(lambda: agent.heartbeat(lease, load=0.2), 5)
        hc_rate = await rate(lambda: agent_health.Check(health_pb2.HealthCheckRequest(), timeout=10), 5)
        await agent.deregister(lease)
        report.append("")
        report.append(
            f"heartbeats over mTLS, one client process, 64 in flight: {hb_rate:,.0f}/s vs Health/Check {hc_rate:,.0f}/s "
            f"on the same connection (ratio {hb_rate / hc_rate:.2f})"
        )

        if args.hb_clients:
            await heartbeat_load(home, ports[0], processes[0].pid, args, report)

        # Propagation: register through replica A, discover through replica B.
        client_b = RegistryClient(settings, kind="client", name="ops", address=f"127.0.0.1:{ports[1]}")
        client_a = RegistryClient(settings, kind="client", name="ops", address=f"127.0.0.1:{ports[0]}")
        appear, appear_a, vanish = [], [], []
        for round_ in range(args.propagation_rounds):
            # A new version each round: discovery answers one candidate per agent, so the version tells them apart.
            agent_card.version = f"2.0.{round_}"
            pinned = f"=={agent_card.version}"

            async def found(client: RegistryClient, pinned: str = pinned) -> bool:
                answer = await client.discover(names=["bench/bench-agent"], version_constraint=pinned)
                return bool(answer.candidates)

            t0 = time.perf_counter()
            response = await agent.register(agent_card, lease_ttl=30)
            if await found(client_a):  # the writer catches up to its own revision before answering
                appear_a.append(time.perf_counter() - t0)
            appear.append(await _until(lambda: found(client_b), t0))
            t0 = time.perf_counter()
            await agent.deregister(response.lease.lease_id)
            vanish.append(await _until(lambda: _negate(found(client_b)), t0))
        a50, _ = _percentiles(appear)
        v50, _ = _percentiles(vanish)
        report.append(
            f"change propagation A→B ({args.propagation_rounds} rounds, poll interval "
            f"{settings.registry_poll_interval * 1000:.0f} ms): registration discoverable on B p50 {_ms(a50)} ms, "
            f"max {_ms(max(appear))} ms; deregistration gone from B's discovery p50 {_ms(v50)} ms, max "
            f"{_ms(max(vanish))} ms; discoverable on A (the writer) in its RegisterAgent reply's wake in "
            f"{len(appear_a)}/{len(appear)} rounds"
        )
        for client in (agent, client_a, client_b):
            await client.close()
        for channel in channels:
            await channel.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


# ---------------------------------------------------------------- stage 3b: heartbeats from several client processes


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Stream phase -> (which opened streams, whether every heartbeat waits for its answer).
_STREAM_PHASES = {"hs": ("hs", True), "hx": ("hx", True), "hu": ("hs", False), "hy": ("hx", False)}


async def _heartbeat_client(
    home: Path, port: int, index: int, leases: int, inflight: int, streams: int
) -> None:
    """One load client process: register ``leases`` instances, then run each phase the parent names on stdin.

    Phases: ``hb SECONDS`` (unary Heartbeat, round robin over the leases) and ``hc SECONDS`` (Health/Check on
    the same connection), ``inflight`` calls at a time; ``hs SECONDS`` (heartbeats over ``streams`` open
    ``StreamHeartbeats`` streams, stream k renewing lease k mod ``leases``, one heartbeat in flight per stream)
    and ``hx SECONDS`` (the same with each stream on its own connection); ``hu`` / ``hy`` the same two without
    waiting for answers (``renew``: a routine heartbeat is one message), each stream closing the phase with one
    answered heartbeat so that every renewal sent was applied before the phase's clock and CPU stop;
    each prints one JSON line (calls, errors, seconds, client CPU). ``quit`` deregisters every lease (a lease
    that expired would fail here) and exits.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agentmesh._registry_client import RegistryClient
    from agentmesh._settings import Settings
    from agentmesh.v1 import agent_pb2, registry_pb2, registry_pb2_grpc

    settings = Settings(home=home, trust_domain=TRUST_DOMAIN, log_level="WARNING")
    client = RegistryClient(settings, kind="agent", name="bench/bench-agent", address=f"127.0.0.1:{port}")
    card = next(cards(1, seed=99))
    card.name, card.namespace, card.version = "bench-agent", "bench", "3.0.0"
    card.spiffe_id = f"spiffe://{TRUST_DOMAIN}/agent/bench/bench-agent"
    lease_ids = []
    for k in range(leases):
        card.endpoint = f"127.0.{index}.{k % 250 + 1}:{7000 + k}"
        lease_ids.append((await client.register(card, lease_ttl=60)).lease.lease_id)
    stub = registry_pb2_grpc.RegistryServiceStub(client.channel)  # type: ignore[no-untyped-call]
    health = health_pb2_grpc.HealthStub(client.channel)
    beats = [
        registry_pb2.HeartbeatRequest(lease_id=lease, state=agent_pb2.SERVING_STATE_SERVING, load=0.2)
        for lease in lease_ids
    ]
    check = health_pb2.HealthCheckRequest()
    for request in beats:  # warm the connection and the handlers
        await stub.Heartbeat(request, timeout=10)
    # The streams are opened (one heartbeat each) before timing: an agent opens its stream once. ``hs`` streams
    # share this process's connection; ``hx`` streams each have their own connection, as separate agents do.
    own = [
        RegistryClient(settings, kind="agent", name="bench/bench-agent", address=f"127.0.0.1:{port}")
        for _ in range(streams)
    ]
    opened = {
        "hs": [client.heartbeat_stream() for _ in range(streams)],
        "hx": [own[k].heartbeat_stream() for k in range(streams)],
    }
    for phase_streams in opened.values():
        for k, stream in enumerate(phase_streams):
            await stream.heartbeat(lease_ids[k % len(lease_ids)], load=0.2, deadline=10)
    print("ready", flush=True)
    while True:
        command = (await asyncio.to_thread(sys.stdin.readline)).split()
        if not command or command[0] == "quit":
            break
        seconds = float(command[1])
        done, errors, turn = 0, 0, 0
        stop_at = time.monotonic() + seconds

        async def worker(kind: str = command[0], stop_at: float = stop_at) -> None:
            nonlocal done, errors, turn
            while time.monotonic() < stop_at:
                try:
                    if kind == "hb":
                        turn += 1
                        await stub.Heartbeat(beats[turn % len(beats)], timeout=10)
                    else:
                        await health.Check(check, timeout=10)
                    done += 1
                except Exception:
                    errors += 1

        async def streamer(k: int, phase: str = command[0], stop_at: float = stop_at) -> None:
            nonlocal done, errors
            kind, answered = _STREAM_PHASES[phase]
            lease = lease_ids[k % len(lease_ids)]
            while True:
                last = time.monotonic() >= stop_at
                try:
                    if answered or last:  # the last one is answered: everything sent before it was applied
                        await opened[kind][k].heartbeat(lease, load=0.2, deadline=10)
                    else:
                        await opened[kind][k].renew(lease, load=0.2, deadline=10)
                    done += 1
                except Exception:
                    errors += 1
                    opened[kind][k] = (client if kind == "hs" else own[k]).heartbeat_stream()
                if last:
                    break

        cpu, t0 = time.process_time(), time.monotonic()
        if command[0] in _STREAM_PHASES:
            await asyncio.gather(*(streamer(k) for k in range(streams)))
        else:
            await asyncio.gather(*(worker() for _ in range(inflight)))
        elapsed = time.monotonic() - t0
        result = {"calls": done, "errors": errors, "seconds": elapsed, "cpu": time.process_time() - cpu}
        print(json.dumps(result), flush=True)
    for phase_streams in opened.values():
        for stream in phase_streams:
            await stream.close()
    for other in own:
        await other.close()
    lost = 0
    for lease in lease_ids:
        try:
            await client.deregister(lease)
        except Exception:
            lost += 1
    await client.close()
    print(json.dumps({"lost": lost}), flush=True)


def _spawn_heartbeat_clients(home: Path, port: int, args: argparse.Namespace) -> list[subprocess.Popen[str]]:
    command = [sys.executable, str(Path(__file__).resolve()), "--hb-worker", str(home), str(port)]
    return [
        subprocess.Popen(
            [*command, str(index), str(args.hb_leases), str(args.hb_inflight), str(args.hb_streams)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(args.hb_clients)
    ]


async def heartbeat_load(
    home: Path, port: int, server_pid: int, args: argparse.Namespace, report: list[str]
) -> None:
    """Several client processes heartbeat one replica over mTLS; its sustained rate and CPU per heartbeat."""
    clients = _spawn_heartbeat_clients(home, port, args)

    async def each_line() -> list[str]:
        return list(
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.to_thread(c.stdout.readline) for c in clients)),  # type: ignore[union-attr]
                timeout=args.hb_seconds + 120,
            )
        )

    def send(line: str) -> None:
        for client in clients:
            client.stdin.write(line + "\n")  # type: ignore[union-attr]
            client.stdin.flush()  # type: ignore[union-attr]

    try:
        if any(line.strip() != "ready" for line in await each_line()):
            raise RuntimeError("a heartbeat client failed to start")
        rows = {}
        for phase in ("hb", "hs", "hx", "hu", "hy", "hc"):
            cpu, t0 = _process_cpu(server_pid), time.monotonic()
            send(f"{phase} {args.hb_seconds}")
            results = [json.loads(line) for line in await each_line()]
            rows[phase] = (
                sum(r["calls"] for r in results),
                sum(r["errors"] for r in results),
                time.monotonic() - t0,
                _process_cpu(server_pid) - cpu,
                sum(r["cpu"] for r in results),
            )
        send("quit")
        lost = sum(json.loads(line)["lost"] for line in await each_line())
    finally:
        for client in clients:
            client.stdin.close()  # type: ignore[union-attr]  # a client reading EOF deregisters and exits
        for client in clients:
            try:
                client.wait(timeout=30)
            except subprocess.TimeoutExpired:
                client.kill()
    (hb, hb_err, hb_s, hb_cpu, hb_client_cpu), (hc, hc_err, hc_s, hc_cpu, hc_client_cpu) = (
        rows["hb"],
        rows["hc"],
    )
    leases = args.hb_clients * args.hb_leases
    report.append(
        f"heartbeats over mTLS, {args.hb_clients} client processes x {args.hb_inflight} in flight, {leases} leases, "
        f"{args.hb_seconds:.0f} s per phase, one registry replica: Heartbeat {hb / hb_s:,.0f}/s sustained "
        f"({hb_err} errors), registry CPU {hb_cpu / hb * 1e6:.0f} µs per heartbeat ({hb_cpu / hb_s:.2f} cores busy; "
        f"capacity of one core ≈ {hb / hb_cpu:,.0f}/s); same run Health/Check {hc / hc_s:,.0f}/s ({hc_err} errors), "
        f"registry CPU {hc_cpu / hc * 1e6:.0f} µs per check ({hc_cpu / hc_s:.2f} cores); heartbeat/check CPU ratio "
        f"{(hb_cpu / hb) / (hc_cpu / hc):.2f}; clients used {hb_client_cpu / hb_s:.2f} / {hc_client_cpu / hc_s:.2f} "
        f"cores; leases lost (expired before deregistration): {lost}"
    )
    for phase, how in (
        ("hs", "sharing one connection per client process, each heartbeat answered"),
        ("hx", "each on its own connection, each heartbeat answered"),
        ("hu", "sharing one connection per client process, routine heartbeats unanswered"),
        ("hy", "each on its own connection, routine heartbeats unanswered"),
    ):
        hs, hs_err, hs_s, hs_cpu, hs_client_cpu = rows[phase]
        report.append(
            f"heartbeats streamed over StreamHeartbeats, {args.hb_clients} client processes x {args.hb_streams} open "
            f"streams {how} (1 in flight each), same leases and replica, {args.hb_seconds:.0f} s: "
            f"{hs / hs_s:,.0f}/s sustained ({hs_err} errors), registry CPU {hs_cpu / hs * 1e6:.0f} µs per heartbeat "
            f"({hs_cpu / hs_s:.2f} cores busy; capacity of one core ≈ {hs / hs_cpu:,.0f}/s); vs unary Heartbeat "
            f"{(hs_cpu / hs) / (hb_cpu / hb):.2f}x the CPU, vs Health/Check {(hs_cpu / hs) / (hc_cpu / hc):.2f}x; "
            f"clients used {hs_client_cpu / hs_s:.2f} cores"
        )


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000, help="queries per kind")
    parser.add_argument("--heartbeat-seconds", type=float, default=40.0)
    parser.add_argument("--propagation-rounds", type=int, default=30)
    parser.add_argument("--skip-mtls", action="store_true")
    parser.add_argument(
        "--discovery-only",
        action="store_true",
        help="discovery stages only: no heartbeat stages, no change propagation",
    )
    parser.add_argument("--hb-clients", type=int, default=4, help="heartbeat client processes (0: skip)")
    parser.add_argument("--hb-leases", type=int, default=50, help="leases per heartbeat client")
    parser.add_argument("--hb-inflight", type=int, default=64, help="unary heartbeats in flight per client")
    parser.add_argument("--hb-streams", type=int, default=50, help="open heartbeat streams per client")
    parser.add_argument("--hb-seconds", type=float, default=10.0, help="seconds per heartbeat-load phase")
    args = parser.parse_args()

    from agentmesh._settings import Settings
    from agentmesh.security import CertificateAuthority
    from agentmesh.storage import upgrade
    from tests.fixtures.postgres import _throwaway_server

    report = _Report()
    vocab = Vocabulary.build()
    started = time.perf_counter()
    all_cards = list(cards(args.agents, vocabulary=vocab))
    report.append(f"{len(all_cards):,} synthetic cards generated in {time.perf_counter() - started:.1f} s")
    requests = _requests(vocab, args.queries, seed=5)
    with _throwaway_server() as server, tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        server.execute('CREATE DATABASE "bench_registry"')
        url = server.url("bench_registry")
        upgrade(url)
        started = time.perf_counter()
        lease_ids = bulk_load(url, all_cards, lease_seconds=3600, ttl=15.0)
        report.append(f"bulk load (COPY) into PostgreSQL: {time.perf_counter() - started:.1f} s")
        home = Path(tmp)
        CertificateAuthority.init(home, TRUST_DOMAIN)
        settings = Settings(home=home, trust_domain=TRUST_DOMAIN, log_level="WARNING")
        asyncio.run(in_service(url, settings, requests, lease_ids, args, report))
        if not args.skip_mtls:
            asyncio.run(over_mtls(home, url, settings, requests, report, args))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hb-worker"]:  # a heartbeat load client started by heartbeat_load()
        from agentmesh.telemetry import run

        home_arg, port_arg, index_arg, leases_arg, inflight_arg, streams_arg = sys.argv[2:8]
        run(
            _heartbeat_client(
                Path(home_arg),
                int(port_arg),
                int(index_arg),
                int(leases_arg),
                int(inflight_arg),
                int(streams_arg),
            )
        )
        raise SystemExit(0)
    raise SystemExit(main())
