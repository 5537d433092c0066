"""Where the over-mTLS time of a discovery answer goes, on the registry's own server stack, without a registry.

    .venv/bin/python bench/bench_registry_transport.py [--calls 2000]

A ``MeshServer`` (mTLS, the mesh interceptor, uvloop) in a separate process serves ``DiscoverAgents`` from a
canned servicer; this process calls it at 1 in flight over mTLS. Each answer carries the time the handler took,
so the client splits its latency into "inside the handler" and "the rest" (interceptor, gRPC core, TLS, the
wire, parsing on both sides). Handlers, interleaved call by call:

- ``empty``: an empty answer at once (the bare transport);
- ``9 KB answer`` / ``4 KB answer``: ten synthetic candidates with whole cards / BASIC-view cards, at once;
- ``spin 0.3 ms``: an empty answer after 0.3 ms of pure CPU (no memory touched);
- ``scan 16 MB``: an empty answer after summing a 16 MB array (~0.3-0.8 ms, evicts the CPU caches).

If "the rest" grows with the answer size, transport and parsing are to blame; if it grows after ``scan`` but
not after ``spin``, the handler's memory traffic slows the gRPC core that runs after it (cold caches).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._registry_cards import TRUST_DOMAIN, cards

HANDLERS = ("empty", "9 KB answer", "4 KB answer", "spin 0.3 ms", "scan 16 MB")


def _answers() -> tuple[Any, Any]:
    """Ten candidates with whole cards, and the same in the BASIC view (as the registry builds them)."""
    from agentmesh.services.registry.model import InstanceRecord, VersionRecord
    from agentmesh.services.registry.servicer import instance_proto
    from agentmesh.services.registry.validation import parse_version
    from agentmesh.v1 import registry_pb2

    full, basic = registry_pb2.DiscoverAgentsResponse(), registry_pb2.DiscoverAgentsResponse()
    for index, card in enumerate(cards(10)):
        record = VersionRecord(index, card, parse_version(card.version), "")
        instance = InstanceRecord(f"{index:032x}", "", index, "10.0.0.1:9000", 1, 0.2, 15.0, "", 1.7e9, 1.7e9)
        reasons = ["visibility: ns-a/x matches 'ns-a/.*'", "purpose is billing", "policies hold: pii:allowed"]
        for answer, basic_view in ((full, False), (basic, True)):
            candidate = answer.candidates.add(score=1.5, reasons=reasons, matched_skill=card.skills[0].name)
            candidate.instance.CopyFrom(instance_proto(instance, record, basic=basic_view))
    return full, basic


async def _serve(home: Path, port: int) -> None:
    import numpy as np

    from agentmesh._server import MeshServer, bind
    from agentmesh._settings import Settings
    from agentmesh.v1 import registry_pb2, registry_pb2_grpc

    full, basic = _answers()
    big = np.ones(4_000_000, dtype=np.float32)

    class Canned(registry_pb2_grpc.RegistryServiceServicer):
        async def DiscoverAgents(self, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            handler = HANDLERS[request.max_results]
            answer = registry_pb2.DiscoverAgentsResponse()
            if handler == "9 KB answer":
                answer.CopyFrom(full)
            elif handler == "4 KB answer":
                answer.CopyFrom(basic)
            elif handler == "spin 0.3 ms":
                while time.perf_counter() - started < 0.0003:
                    pass
            elif handler == "scan 16 MB":
                big.sum()
            answer.visible_count = int(
                (time.perf_counter() - started) * 1e6
            )  # the handler's µs, for the client
            return answer

    settings = Settings(home=home, trust_domain=TRUST_DOMAIN, log_level="WARNING")
    service = bind(
        Canned(), registry_pb2_grpc.add_RegistryServiceServicer_to_server, "agentmesh.v1.RegistryService"
    )
    server = MeshServer(name="registry", settings=settings, port=port, services=[service])
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _measure(home: Path, port: int, calls: int) -> None:
    from agentmesh._channel import create_channel
    from agentmesh._health import wait_until_serving
    from agentmesh._settings import Settings
    from agentmesh.v1 import registry_pb2, registry_pb2_grpc

    settings = Settings(home=home, trust_domain=TRUST_DOMAIN, log_level="WARNING")
    channel = create_channel(f"127.0.0.1:{port}", settings, kind="client", name="ops")
    await wait_until_serving(channel, within=30)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
    requests = [registry_pb2.DiscoverAgentsRequest(max_results=k) for k in range(len(HANDLERS))]
    total: dict[str, list[float]] = {h: [] for h in HANDLERS}
    inside: dict[str, list[float]] = {h: [] for h in HANDLERS}
    # In blocks of 50 calls of one handler, the blocks interleaved: a call mostly follows a call of its own kind
    # (a handler's cache footprint slows the calls after it too), while load drifts hit every handler alike.
    for block in range((calls + 200) // 50):
        for handler, request in zip(HANDLERS, requests, strict=True):
            for _ in range(50):
                started = time.perf_counter()
                answer = await stub.DiscoverAgents(request, timeout=10)
                took = time.perf_counter() - started
                if block >= 4:  # warm-up
                    total[handler].append(took)
                    inside[handler].append(answer.visible_count / 1e6)
    await channel.close()
    print(f"load average {os.getloadavg()[0]:.2f}; {len(total[HANDLERS[0]])} calls per handler, 1 in flight")
    print("| handler | answer | client p50 ms | client mean ms | inside the handler ms | rest ms (mean) |")
    print("|---|---|---|---|---|---|")
    sizes = dict(zip(HANDLERS, (0, *(a.ByteSize() for a in _answers()), 0, 0), strict=True))
    for handler in HANDLERS:
        mean, handler_mean = statistics.fmean(total[handler]), statistics.fmean(inside[handler])
        print(
            f"| {handler} | {sizes[handler] / 1024:.1f} KiB | {statistics.median(total[handler]) * 1e3:.3f} | "
            f"{mean * 1e3:.3f} | {handler_mean * 1e3:.3f} | {(mean - handler_mean) * 1e3:.3f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per handler")
    args = parser.parse_args()
    from agentmesh.security import CertificateAuthority

    with tempfile.TemporaryDirectory(prefix="bench-transport-") as tmp:
        home = Path(tmp)
        CertificateAuthority.init(home, TRUST_DOMAIN)
        ca = CertificateAuthority.load(home)
        ca.issue("service", "registry")
        ca.issue("client", "ops")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        env = {**os.environ, "AGENTMESH_HOME": str(home), "AGENTMESH_TRUST_DOMAIN": TRUST_DOMAIN}
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(home), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            if server.stdout is None or server.stdout.readline().strip() != "ready":
                raise RuntimeError("the canned server did not start")
            asyncio.run(_measure(home, port, args.calls))
        finally:
            server.terminate()
            server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:  # the canned server process started by main()
        from agentmesh.telemetry import run

        run(_serve(Path(sys.argv[2]), int(sys.argv[3])))
        raise SystemExit(0)
    raise SystemExit(main())
