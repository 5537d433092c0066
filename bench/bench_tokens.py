"""Cost of delegation-token verification per call, cold and cached, relative to a bare mTLS unary call.

Within one run: the p50 of bare ``grpc.aio`` mTLS unary calls at 1 in flight (the baseline), then the
median per-token cost of

- ``issue``: the planner minting one step token (ES256 signature, ``x5c`` header);
- ``cold_new_signer``: the first token a fresh verifier sees (CA bundle read, chain verified, signature);
- ``cold``: a token never seen before from a signer already verified (signature and claims; what an agent
  pays once per step);
- ``cached``: a token already verified (SHA-256 of the token and one dict lookup; what a retry pays).

Each share is that cost over the bare call's p50.

    .venv/bin/python bench/bench_tokens.py [--calls 2000] [--tokens 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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
    DelegationIssuer,
    DelegationVerifier,
    TokenKind,
)
from bench._bare_mtls import bare_p50_us

TRUST_DOMAIN = "agentmesh.local"
AUDIENCE = f"spiffe://{TRUST_DOMAIN}/agent/support/crm"


def _median_us(items: list[Any], run: Callable[[Any], object]) -> float:
    samples = []
    for item in items:
        start = time.perf_counter()
        run(item)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def _token_costs(settings: Settings, tokens: int) -> dict[str, float]:
    planner = DelegationIssuer.from_settings(settings, "service", "planner")

    def issue(_: object) -> str:
        return planner.issue(
            kind=TokenKind.STEP,
            audience=AUDIENCE,
            subject="user-42",
            tenant="acme",
            scopes=["pii:read", "orders:read"],
            actor_chain=[
                f"spiffe://{TRUST_DOMAIN}/service/planner",
                f"spiffe://{TRUST_DOMAIN}/service/gateway",
            ],
            task_id="task-1",
            step_id="step-1",
        )

    minted = [issue(None) for _ in range(tokens)]

    def fresh_verifier() -> DelegationVerifier:
        return DelegationVerifier.from_settings(settings, AUDIENCE)

    verifier = fresh_verifier()
    verifier.verify(issue(None))  # the signer's chain is verified once here
    costs = {"token_chars": float(len(minted[0]))}
    costs["issue_us"] = _median_us(list(range(min(tokens, 500))), issue)
    costs["cold_new_signer_us"] = _median_us(minted[: min(tokens, 300)], lambda t: fresh_verifier().verify(t))
    costs["cold_us"] = _median_us(minted, lambda t: verifier.verify(t, task_id="task-1"))
    costs["cached_us"] = _median_us(minted, lambda t: verifier.verify(t, task_id="task-1"))
    return costs


async def _run(calls: int, tokens: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="bench-tokens-"))
    ca = CertificateAuthority.init(home, TRUST_DOMAIN)
    ca.issue("service", "bench-server")
    ca.issue("service", "planner")
    settings = Settings(home=home, trust_domain=TRUST_DOMAIN)
    measured = {"bare_p50_us": await bare_p50_us(settings, calls)}
    measured.update(_token_costs(settings, tokens))
    for name in ("issue", "cold_new_signer", "cold", "cached"):
        measured[f"{name}_share_of_call"] = measured[f"{name}_us"] / measured["bare_p50_us"]
    return measured


def main() -> None:
    """Print the figures as ``name value`` lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="bare unary calls for the baseline p50")
    parser.add_argument("--tokens", type=int, default=2000, help="distinct tokens verified cold, then cached")
    args = parser.parse_args()
    for name, value in asyncio.run(_run(args.calls, args.tokens)).items():
        print(f"{name} {value:.3f}")


if __name__ == "__main__":
    main()
