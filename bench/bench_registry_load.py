"""A registry replica starting on a big registry: snapshot load time, event-loop stall while loading, own RSS.

    .venv/bin/python bench/bench_registry_load.py [--agents 10000,100000] [--probe-interval 0.01]

For each size: synthetic cards (``bench/_registry_cards.py``) bulk loaded into a throwaway PostgreSQL 15, then a
real replica process (``agentmesh registry``) is started on it. While it loads, this process asks its health
service every ``--probe-interval`` seconds (1 in flight, mTLS): the replica must answer NOT_SERVING promptly, so
the slowest answer before SERVING bounds the longest stall of its event loop (plus one round trip; the round
trip of the same probe once SERVING is reported beside it). Load time and the longest event-loop stall during it
(a 5 ms ticker's lateness, ``LoopStalls``) are the replica's own log line, with where the loop's thread was during
that stall (running, runnable but waiting for a CPU: the machine is busy, or blocked on the GIL; Linux schedstat);
RSS is the replica process's VmRSS once SERVING and its peak (VmHWM), from /proc. The machine's 1-minute load
average is sampled while each replica loads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._registry_cards import TRUST_DOMAIN, Vocabulary, bulk_load, cards

_LOADED = re.compile(
    r"registry loaded (\d+) versions, (\d+) instances at revision \d+ in ([\d.]+)s"
    r" \(longest event-loop stall ([\d.]+) ms: ([\d.]+) ms running on the loop, ([\d.]+) ms waiting for a CPU,"
    r" ([\d.]+) ms waiting for the GIL\)"
)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _probe(address: str, home: Path, process: subprocess.Popen[bytes], interval: float) -> dict[str, float]:
    import grpc

    from agentmesh._failover import replica_options
    from agentmesh._health import check_health
    from agentmesh._settings import Settings
    from agentmesh.security import channel_credentials

    settings = Settings(home=home, trust_domain=TRUST_DOMAIN)
    # A plain channel: no breaker or retries between the probe and the replica (a mesh channel's breaker
    # would open while the replica is not listening yet and hide the load).
    channel = grpc.aio.secure_channel(
        address,
        channel_credentials(settings, "client", "ops"),
        options=list(replica_options(settings, "service/registry")),
    )
    worst, answered, serving_rtts = 0.0, 0, []
    loads = [os.getloadavg()[0]]
    try:
        while process.poll() is None:
            loads.append(os.getloadavg()[0])
            started = time.perf_counter()
            status = await check_health(channel, within=30.0)  # type: ignore[arg-type]
            took = time.perf_counter() - started
            if status == "NOT_SERVING":
                answered += 1
                worst = max(worst, took)
            elif status == "SERVING":
                serving_rtts.append(took)
                if len(serving_rtts) >= 50:
                    break
            await asyncio.sleep(interval)
    finally:
        await channel.close(None)
    serving_rtts.sort()
    return {
        "worst": worst,
        "answered": answered,
        "rtt": serving_rtts[len(serving_rtts) // 2] if serving_rtts else 0,
        "load_low": min(loads),
        "load_high": max(loads),
    }


def _one(size: int, server: object, vocab: Vocabulary, interval: float) -> str:
    from agentmesh.security import CertificateAuthority
    from agentmesh.storage import upgrade
    from tests.fixtures.postgres import _free_port

    database = f"bench_load_{size}"
    server.execute(f'CREATE DATABASE "{database}"')  # type: ignore[attr-defined]
    url = server.url(database)  # type: ignore[attr-defined]
    upgrade(url)
    bulk_load(url, list(cards(size, vocabulary=vocab)), lease_seconds=3600, ttl=15.0)
    with tempfile.TemporaryDirectory(prefix="bench-registry-load-") as tmp:
        home = Path(tmp)
        ca = CertificateAuthority.init(home, TRUST_DOMAIN)
        ca.issue("service", "registry")
        ca.issue("client", "ops")
        port = _free_port()
        env = {
            **os.environ,
            "AGENTMESH_HOME": str(home),
            "AGENTMESH_TRUST_DOMAIN": TRUST_DOMAIN,
            "AGENTMESH_DATABASE_URL": url,
            "AGENTMESH_LOG_FORMAT": "text",
            "AGENTMESH_READINESS_INTERVAL": "0.1",
        }
        log = home / "registry.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "agentmesh.cli", "registry", "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
            try:
                probe = asyncio.run(_probe(f"127.0.0.1:{port}", home, process, interval))
                rss, peak = _status_kib(process.pid, "VmRSS"), _status_kib(process.pid, "VmHWM")
            finally:
                process.terminate()
                process.wait(30)
        text = log.read_text(errors="replace")
    found = _LOADED.search(text)
    load, stall, running, waiting, gil = found.groups()[2:] if found else ("?",) * 5
    return (
        f"| {size:,} | {load} s | {stall} ms | {running} / {waiting} / {gil} ms "
        f"| {probe['worst'] * 1e3:.1f} ms ({probe['answered']:.0f} answers) "
        f"| {probe['rtt'] * 1e3:.2f} ms | {rss / 1024:.0f} MiB | {peak / 1024:.0f} MiB "
        f"| {probe['load_low']:.1f}-{probe['load_high']:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="10000,100000", help="comma-separated registry sizes")
    parser.add_argument("--probe-interval", type=float, default=0.01)
    args = parser.parse_args()
    from tests.fixtures.postgres import _throwaway_server

    vocab = Vocabulary.build()
    rows = [
        "| instances | snapshot load (replica log) | longest event-loop stall while loading (replica log) "
        "| of it: running on the loop / waiting for a CPU / waiting for the GIL "
        "| slowest NOT_SERVING answer while loading | probe round trip once SERVING "
        "| replica RSS once SERVING | replica peak RSS | load average (1 min) while loading |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with _throwaway_server() as server:
        for size in (int(n) for n in args.agents.split(",") if n.strip()):
            rows.append(_one(size, server, vocab, args.probe_interval))
            print(rows[-1], file=sys.stderr)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
