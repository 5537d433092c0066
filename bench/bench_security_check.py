"""Cost of the per-call SPIFFE identity + authorization check, relative to a bare mTLS unary call.

Within one run: the p50 of bare ``grpc.aio`` mTLS unary calls at 1 in flight (the baseline), and, inside
a handler on a real mTLS connection, the mean cost of ``context.auth_context()`` alone and of the full
``ServerSecurity.check`` (auth context read, SPIFFE id, cached policy decision, contextvar) over many
repetitions. The check's share of a call is check / p50.

Revocation (issue 10): the same check with a revocation set, against the check as it was before revocation
existed (``--baseline-rev``, loaded from git into this process, so both run on the same connection in the same
run): with nothing revoked, with ``--revoked`` identities revoked, and with as many certificate serials revoked
(the caller's certificate is then looked up by its PEM bytes on every call). Variants are measured in
interleaved rounds, in CPU time of the handler's thread; each figure is the minimum over rounds (``*_median_us``: the median), and ``*_added_us``
is a variant's minimum minus the baseline's. ``isolated_*``: the same checks on auth contexts captured from the
connection and rebuilt outside the timed loop (fresh bytes each, as gRPC makes them), so the difference is
not drowned by the cost and noise of gRPC building the auth context.

    .venv/bin/python bench/bench_security_check.py [--calls 2000] [--repeat 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench._bare_mtls

from agentmesh._settings import Settings
from agentmesh.security import (
    CertificateAuthority,
    RevocationSet,
    ServerSecurity,
    server_security,
)
from bench._bare_mtls import bare_echo_server, echo_latencies, raw_call

METHOD = "/agentmesh.v1.AgentService/Invoke"
ROOT = Path(__file__).resolve().parents[1]
# The last commit before revocation checks were added to ServerSecurity.check.
BASELINE_REV = "a233b58"


def _baseline_security(rev: str, settings: Settings) -> Any:
    """``ServerSecurity`` as it was at ``rev`` (its module source read from git), for a same-run baseline."""
    source = subprocess.run(
        ["git", "show", f"{rev}:sdk/security/_server_security.py"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-baseline-")) / "baseline_server_security.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("baseline_server_security", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ServerSecurity(settings, "service", "bench-server")


def _revoked(count: int, *, serials: bool) -> RevocationSet:
    revocations = RevocationSet()
    ids = [] if serials else [f"spiffe://agentmesh.local/agent/ns/revoked-{i}" for i in range(count)]
    revocations.replace(ids, range(1, count + 1) if serials else [], 1)
    return revocations


async def _run(calls: int, repeat: int, rounds: int, revoked: int, baseline_rev: str) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="bench-security-"))
    ca = CertificateAuthority.init(home, "agentmesh.local")
    ca.issue("service", "bench-server")
    ca.issue("service", "planner")
    settings = Settings(home=home)
    security = server_security(settings, "service", "bench-server")
    variants: dict[str, Any] = {
        "check_before_revocation_us": _baseline_security(baseline_rev, settings),
        "check_us": security,
        "check_revoked_ids_us": ServerSecurity(
            settings, "service", "bench-server", revocations=_revoked(revoked, serials=False)
        ),
        "check_revoked_serials_us": ServerSecurity(
            settings, "service", "bench-server", revocations=_revoked(revoked, serials=True)
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in ("auth_context_us", *variants)}
    measured: dict[str, float] = {}

    # In-handler costs are CPU time of this thread: the check is pure CPU, and time stolen by other processes on
    # a shared machine would otherwise swamp differences of a microsecond.
    def timed(action: Callable[[], object]) -> float:
        start = time.thread_time()
        for _ in range(repeat):
            action()
        return (time.thread_time() - start) / repeat * 1e6

    def timed_isolated(checker: Any, auth: dict[str, list[bytes]]) -> float:
        # Fresh auth dicts (new bytes, as gRPC builds them per call) made outside the timed loop.
        contexts = [
            _Captured({k: [bytes(bytearray(v)) for v in vs] for k, vs in auth.items()}) for _ in range(repeat)
        ]
        start = time.thread_time()
        for captured in contexts:
            checker.check(METHOD, captured)
        return (time.thread_time() - start) / repeat * 1e6

    async def measure(request: bytes, context: Any) -> bytes:
        auth = context.auth_context()
        for _ in range(rounds):
            samples["auth_context_us"].append(timed(context.auth_context))
            for name, checker in variants.items():
                samples[name].append(timed(lambda checker=checker: checker.check(METHOD, context)))
                samples.setdefault(name.replace("check", "isolated"), []).append(
                    timed_isolated(checker, auth)
                )
        for name, values in samples.items():
            # The minimum over rounds is the least disturbed by other work on the machine; the median is kept too.
            measured[name] = min(values)
            measured[name.replace("_us", "_median_us")] = statistics.median(values)
        return request

    async with bare_echo_server(settings, {"Measure": measure}) as channel:
        latencies = await echo_latencies(channel, calls)
        await raw_call(channel, "Measure")(b"x", timeout=600)
    measured["bare_p50_us"] = statistics.median(latencies) * 1e6
    measured["check_share_of_call"] = measured["check_us"] / measured["bare_p50_us"]
    for prefix in ("check", "isolated"):
        before = measured[f"{prefix}_before_revocation_us"]
        for name in (f"{prefix}_us", f"{prefix}_revoked_ids_us", f"{prefix}_revoked_serials_us"):
            measured[name.replace("_us", "_added_us")] = measured[name] - before
    return measured


class _Captured:
    """A servicer context reduced to the auth context the check reads."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def main() -> None:
    """Print the figures as ``name value`` lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="bare unary calls for the baseline p50")
    parser.add_argument("--repeat", type=int, default=20000, help="check repetitions inside the handler")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of every variant")
    parser.add_argument(
        "--revoked", type=int, default=1000, help="revoked identities (or serials) in the set"
    )
    parser.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="git revision of the check before revocation"
    )
    args = parser.parse_args()
    figures = asyncio.run(_run(args.calls, args.repeat, args.rounds, args.revoked, args.baseline_rev))
    for name, value in figures.items():
        print(f"{name} {value:.3f}")


if __name__ == "__main__":
    main()
