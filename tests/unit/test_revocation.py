"""The revocation set a server checks per call: by identity, by certificate serial, at once after a change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmesh._errors import InvalidArgumentError, PermissionDeniedError, UnauthenticatedError
from agentmesh._settings import Settings
from agentmesh.security import (
    CertificateAuthority,
    RevocationFollower,
    RevocationSet,
    ServerSecurity,
    certificate_serial,
    format_serial,
    parse_serial,
)
from agentmesh.security._identity import _CURRENT

TD = "agentmesh.test"
METHOD = "/agentmesh.v1.RegistryService/Heartbeat"
AGENT = f"spiffe://{TD}/agent/support/triage"


class _Context:
    def __init__(self, properties: dict[str, list[bytes]]) -> None:
        self._properties = properties

    def auth_context(self) -> dict[str, list[bytes]]:
        # gRPC builds a new dict of new bytes for every call: so does this.
        return {key: [bytes(bytearray(v)) for v in values] for key, values in self._properties.items()}


@pytest.fixture(autouse=True)
def _no_caller_left_behind() -> Iterator[None]:
    # The check sets the current caller (a context variable): leave it as found for the tests that follow.
    token = _CURRENT.set(None)
    yield
    _CURRENT.reset(token)


@pytest.fixture
def caller(tmp_path: Path) -> tuple[_Context, int]:
    """An agent's auth context with a real certificate, and that certificate's serial."""
    ca = CertificateAuthority.init(tmp_path, TD)
    pem = ca.issue("agent", "support/triage").cert_path.read_bytes()
    return _Context({"peer_spiffe_id": [AGENT.encode()], "x509_pem_cert": [pem]}), certificate_serial(pem)


def test_a_revoked_identity_is_refused_even_after_its_calls_were_allowed(caller: tuple[_Context, int]) -> None:
    context, _ = caller
    revocations = RevocationSet()
    security = ServerSecurity(Settings(trust_domain=TD), "service", "registry", revocations=revocations)
    security.check(METHOD, context)  # allowed, and remembered as allowed
    assert revocations.replace([AGENT], [], revision=7)
    with pytest.raises(PermissionDeniedError, match="revoked") as refused:
        security.check(METHOD, context)
    assert refused.value.metadata["identity"] == AGENT
    revocations.replace([], [], revision=8)
    security.check(METHOD, context)


def test_a_revoked_certificate_is_refused_and_a_new_one_of_the_same_identity_is_not(
    caller: tuple[_Context, int], tmp_path: Path
) -> None:
    context, serial = caller
    revocations = RevocationSet()
    security = ServerSecurity(Settings(trust_domain=TD), "service", "registry", revocations=revocations)
    revocations.replace([], [serial], revision=3)
    with pytest.raises(UnauthenticatedError, match=format_serial(serial)):
        security.check(METHOD, context)
    renewed = CertificateAuthority.load(tmp_path).issue("agent", "support/triage").cert_path.read_bytes()
    security.check(METHOD, _Context({"peer_spiffe_id": [AGENT.encode()], "x509_pem_cert": [renewed]}))


def test_serials_are_hexadecimal_as_certs_show_prints_them() -> None:
    assert parse_serial("0x1A:2b") == 0x1A2B == parse_serial(format_serial(0x1A2B))
    for bad in ("", "xyz", "0", "f" * 41):
        with pytest.raises(InvalidArgumentError):
            parse_serial(bad)


async def test_a_follower_starts_from_the_set_it_saved(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, trust_domain=TD, registry_address="127.0.0.1:1")  # no registry there
    saved = tmp_path / "revocations.json"
    saved.write_text(json.dumps({"revision": 4, "spiffe_ids": [AGENT], "certificate_serials": ["ff"]}))
    revocations = RevocationSet()
    follower = RevocationFollower(settings, revocations, kind="agent", name="support/triage", cache_file=saved)
    await follower.start()
    try:
        assert revocations.is_revoked(AGENT) and revocations.is_revoked("x", 0xFF) and revocations.revision == 4
        assert not follower.synced
    finally:
        await follower.stop()
