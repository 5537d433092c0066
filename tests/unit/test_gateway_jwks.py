"""The gateway's JWKS cache against a JWKS served over HTTP: keys by kid, and a rotated key found by refetching."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmesh._errors import UnauthenticatedError
from agentmesh.services.gateway.auth import JwksCache, TokenVerifier
from agentmesh.services.gateway.devtokens import DevIssuer


@pytest.fixture
def served_jwks(tmp_path: Path) -> Iterator[tuple[str, DevIssuer]]:
    issuer = DevIssuer(tmp_path, issuer="https://issuer.test", audience="api")
    issuer.rotate()
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = issuer.jwks_path.read_bytes()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", issuer
    finally:
        server.shutdown()


async def test_a_rotated_key_is_fetched_once_and_unknown_keys_are_refused(served_jwks: tuple[str, DevIssuer]) -> None:
    url, issuer = served_jwks
    clock = [0.0]
    cache = JwksCache(url, ttl=300.0, min_refresh=10.0, clock=lambda: clock[0])
    verifier = TokenVerifier(cache, issuer="https://issuer.test", audience="api", algorithms=["ES256"])
    first = await verifier.verify(issuer.issue(subject="alice", scopes=["tasks:read"]))
    assert first.subject == "alice" and first.scopes == {"tasks:read"}

    issuer.rotate()
    clock[0] = 11.0  # past the refetch floor: the new kid triggers one refetch, within the TTL
    second = await verifier.verify(issuer.issue(subject="bob", scopes=["tasks:read"]))
    assert second.subject == "bob"

    with pytest.raises(UnauthenticatedError) as refused:
        await cache.key("no-such-kid")
    assert refused.value.reason == "UNKNOWN_KEY"


def test_symmetric_or_none_algorithms_cannot_be_pinned(tmp_path: Path) -> None:
    for algorithms in (["HS256"], ["none"], []):
        with pytest.raises(ValueError):
            TokenVerifier(JwksCache(str(tmp_path / "jwks.json")), issuer="i", audience="a", algorithms=algorithms)


async def test_a_flood_of_unknown_key_ids_costs_one_refetch(served_jwks: tuple[str, DevIssuer]) -> None:
    import asyncio

    url, _issuer = served_jwks
    clock = [0.0]
    cache = JwksCache(url, ttl=300.0, min_refresh=10.0, clock=lambda: clock[0])
    fetches: list[float] = []
    fetch = cache._fetch

    def counted() -> object:
        fetches.append(clock[0])
        return fetch()

    cache._fetch = counted  # type: ignore[method-assign]
    with pytest.raises(UnauthenticatedError):
        await cache.key("warm-up")  # the first load
    clock[0] = 11.0
    results = await asyncio.gather(*(cache.key(f"made-up-{n}") for n in range(50)), return_exceptions=True)
    assert all(isinstance(r, UnauthenticatedError) and r.reason == "UNKNOWN_KEY" for r in results)
    assert len(fetches) == 2  # the first load, then one refetch for all 50 concurrent calls (not one each)


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({"scope": "tasks:read approve"}, {"tasks:read", "approve"}),
        ({"scope": ["tasks:read", "approve"]}, {"tasks:read", "approve"}),
        ({"scp": ["tasks:read"]}, {"tasks:read"}),
        ({"scope": 5}, None),  # was a TypeError (INTERNAL at the gateway)
        ({"scope": {"tasks:submit": True}}, None),  # was read as granting tasks:submit
        ({"scope": ["tasks:read", 1]}, None),
        ({"scope": "tasks:read", "tenant": {"id": "acme"}}, None),  # was the tenant "{'id': 'acme'}"
    ],
)
async def test_scope_and_tenant_claims_of_the_wrong_type_are_refused(
    tmp_path: Path, claims: dict[str, object], scopes: set[str] | None
) -> None:
    import time

    import jwt

    issuer = DevIssuer(tmp_path, issuer="https://issuer.test", audience="api")
    key, kid = issuer._key()
    now = int(time.time())
    token = jwt.encode(
        {"iss": "https://issuer.test", "aud": "api", "sub": "alice", "exp": now + 600, **claims},
        key,
        algorithm="ES256",
        headers={"kid": kid},
    )
    verifier = TokenVerifier(
        JwksCache(str(issuer.jwks_path)), issuer="https://issuer.test", audience="api", algorithms=["ES256"]
    )
    if scopes is not None:
        assert (await verifier.verify(token)).scopes == scopes
        return
    with pytest.raises(UnauthenticatedError) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "TOKEN_MALFORMED" and token not in refused.value.message


async def test_an_unreachable_jwks_is_refused_without_revealing_its_address(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache = JwksCache(f"http://gateway:s3cret-pw@127.0.0.1:{port}/internal/jwks.json")
    caplog.set_level("DEBUG")
    with pytest.raises(UnauthenticatedError) as refused:
        await cache.key("any")
    assert refused.value.reason == "JWKS_UNAVAILABLE"
    assert "s3cret-pw" not in refused.value.message and "/internal/" not in refused.value.message
    assert "s3cret-pw" not in caplog.text and "/internal/jwks.json" in caplog.text  # the operator still sees where


async def test_a_key_withdrawn_from_the_jwks_ends_its_tokens_even_when_their_verdict_is_cached(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path, issuer="https://issuer.test", audience="api")
    issuer.rotate()
    token = issuer.issue(subject="alice", scopes=["tasks:read"])
    verifier = TokenVerifier(
        JwksCache(str(issuer.jwks_path), min_refresh=0.0),
        issuer="https://issuer.test",
        audience="api",
        algorithms=["ES256"],
    )
    assert (await verifier.verify(token)).subject == "alice"  # verdict cached until the token expires
    issuer.rotate()
    issuer.rotate()  # the JWKS keeps one previous key: alice's signing key is gone (e.g. it leaked)
    with pytest.raises(UnauthenticatedError) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "UNKNOWN_KEY"
    assert (await verifier.verify(issuer.issue(subject="bob", scopes=["tasks:read"]))).subject == "bob"
