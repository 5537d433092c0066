"""Delegation tokens: the gateway and the planner mint them with their own certificates; a workload accepts
only the ones the mesh CA vouches for, from the right issuer, addressed to it, short-lived and ES256.
Every forgery an attacker inside the mesh could try is refused with a reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel

from agentmesh._errors import InvalidArgumentError, MeshError, PermissionDeniedError, UnauthenticatedError
from agentmesh._settings import Settings
from agentmesh.agent import Agent, AgentInfo, Invocation, SkillContext, SkillRunner, skill
from agentmesh.security import (
    CertificateAuthority,
    CredentialFiles,
    DelegationIssuer,
    DelegationVerifier,
    IssuedCertificate,
    TokenKind,
)
from tests.fixtures.certs import TRUST_DOMAIN, IssueIdentity

CRM = f"spiffe://{TRUST_DOMAIN}/agent/support/crm"
PLANNER = f"spiffe://{TRUST_DOMAIN}/service/planner"
GATEWAY = f"spiffe://{TRUST_DOMAIN}/service/gateway"


def issuer_of(cert: IssuedCertificate, **kw: Any) -> DelegationIssuer:
    return DelegationIssuer(CredentialFiles(cert.cert_path, cert.key_path, cert.ca_path), **kw)


@pytest.fixture
def planner(issue_identity: IssueIdentity) -> DelegationIssuer:
    return issuer_of(issue_identity("service", "planner"))


@pytest.fixture
def gateway(issue_identity: IssueIdentity) -> DelegationIssuer:
    return issuer_of(issue_identity("service", "gateway"))


@pytest.fixture
def verifier(mesh_ca: CertificateAuthority) -> DelegationVerifier:
    """The CRM agent's verifier (a fresh cache per test)."""
    return DelegationVerifier(ca_file=mesh_ca.ca_path, trust_domain=TRUST_DOMAIN, audience=CRM)


def step(issuer: DelegationIssuer, **overrides: Any) -> str:
    fields: dict[str, Any] = {
        "kind": TokenKind.STEP,
        "audience": CRM,
        "subject": "user-42",
        "tenant": "acme",
        "scopes": ["pii:read", "orders:read"],
        "actor_chain": [PLANNER, GATEWAY],
        "task_id": "task-1",
        "step_id": "lookup",
    }
    return issuer.issue(**{**fields, **overrides})


def refusal(verifier: DelegationVerifier, token: str, **kw: Any) -> MeshError:
    with pytest.raises(MeshError) as refused:
        verifier.verify(token, **kw)
    return refused.value


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return _unb64(header), _unb64(payload), signature


def _unb64(segment: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- what a valid token carries ---------------------------------------------------------------------------


def test_a_planner_step_token_verifies_with_all_its_claims(
    planner: DelegationIssuer, verifier: DelegationVerifier
) -> None:
    token = step(planner)
    claims = verifier.verify(token, kind=TokenKind.STEP, task_id="task-1")
    assert (claims.kind, claims.subject, claims.tenant) == (TokenKind.STEP, "user-42", "acme")
    assert claims.scopes == {"pii:read", "orders:read"}
    assert claims.actor_chain == (PLANNER, GATEWAY)  # RFC 8693 act, outermost first
    assert (claims.issuer, claims.audience) == (PLANNER, CRM)
    assert (claims.task_id, claims.step_id) == ("task-1", "lookup")
    assert claims.expires_at - claims.issued_at == 120
    assert claims.token_hash == hashlib.sha256(token.encode()).hexdigest() and claims.token_id
    header, payload, _ = segments(token)
    assert header["alg"] == "ES256" and header["typ"] == "agentmesh-step+jwt" and len(header["x5c"]) == 1
    assert (
        payload["act"] == {"sub": PLANNER, "act": {"sub": GATEWAY}}
        and payload["scope"] == "orders:read pii:read"
    )


def test_a_gateway_end_user_token_verifies_and_belongs_to_no_task(
    gateway: DelegationIssuer, verifier: DelegationVerifier
) -> None:
    token = gateway.issue(kind=TokenKind.END_USER, audience=CRM, subject="alice", tenant="acme", scopes=[])
    claims = verifier.verify(token, task_id="any-task")
    assert claims.kind is TokenKind.END_USER and claims.task_id is None and claims.scopes == frozenset()
    assert refusal(verifier, token, kind=TokenKind.STEP).reason == "TOKEN_WRONG_KIND"


def test_the_issuer_refuses_malformed_requests(planner: DelegationIssuer) -> None:
    for overrides in (
        {"ttl_seconds": 301},  # longer than any verifier accepts
        {"ttl_seconds": 0},
        {"task_id": None},  # a step token belongs to a task
        {"audience": "crm"},
        {"subject": ""},
        {"scopes": ["pii read"]},
    ):
        with pytest.raises(InvalidArgumentError):
            step(planner, **overrides)


# --- refusals ------------------------------------------------------------------------------------------------


def test_an_expired_token_is_refused(issue_identity: IssueIdentity, verifier: DelegationVerifier) -> None:
    past = issuer_of(issue_identity("service", "planner"), clock=lambda: time.time() - 400)
    error = refusal(verifier, step(past))
    assert isinstance(error, UnauthenticatedError) and error.reason == "TOKEN_EXPIRED"


def test_a_token_from_the_future_is_refused(
    issue_identity: IssueIdentity, verifier: DelegationVerifier
) -> None:
    future = issuer_of(issue_identity("service", "planner"), clock=lambda: time.time() + 120)
    assert refusal(verifier, step(future)).reason == "TOKEN_NOT_YET_VALID"


def test_a_token_for_another_workload_is_refused(
    planner: DelegationIssuer, verifier: DelegationVerifier
) -> None:
    token = step(planner, audience=f"spiffe://{TRUST_DOMAIN}/agent/support/responder")
    error = refusal(verifier, token)
    assert isinstance(error, PermissionDeniedError) and error.reason == "TOKEN_WRONG_AUDIENCE"


def test_a_step_token_of_another_task_is_refused(
    planner: DelegationIssuer, verifier: DelegationVerifier
) -> None:
    token = step(planner)
    error = refusal(verifier, token, task_id="task-2")
    assert isinstance(error, PermissionDeniedError) and error.reason == "TOKEN_WRONG_TASK"
    assert refusal(verifier, token, task_id="").reason == "TOKEN_WRONG_TASK"  # a call outside any task


def test_tokens_signed_by_identities_that_are_not_issuers_of_that_kind_are_refused(
    issue_identity: IssueIdentity,
    planner: DelegationIssuer,
    gateway: DelegationIssuer,
    verifier: DelegationVerifier,
) -> None:
    agent = issuer_of(issue_identity("agent", "support/responder"))  # a valid mesh identity, not an issuer
    ops = issuer_of(issue_identity("client", "ops"))
    for token in (
        step(agent),
        step(ops),
        step(gateway),  # the gateway mints end-user tokens only
        planner.issue(kind=TokenKind.END_USER, audience=CRM, subject="u", tenant="t", scopes=[]),
    ):
        error = refusal(verifier, token)
        assert isinstance(error, PermissionDeniedError) and error.reason == "TOKEN_ISSUER_NOT_ALLOWED"


def test_a_token_signed_under_another_ca_is_refused(tmp_path: Path, verifier: DelegationVerifier) -> None:
    # Same trust domain, same SPIFFE id as the real planner: only the CA tells them apart.
    rogue_ca = CertificateAuthority.init(tmp_path, TRUST_DOMAIN)
    rogue_planner = issuer_of(rogue_ca.issue("service", "planner"))
    error = refusal(verifier, step(rogue_planner))
    assert isinstance(error, UnauthenticatedError) and error.reason == "TOKEN_SIGNER_UNTRUSTED"


def test_a_token_signed_by_another_key_under_the_real_planners_chain_is_refused(
    tmp_path: Path, planner: DelegationIssuer, verifier: DelegationVerifier
) -> None:
    rogue_ca = CertificateAuthority.init(tmp_path, TRUST_DOMAIN)
    rogue = step(issuer_of(rogue_ca.issue("service", "planner")))
    header, _, _ = segments(step(planner))
    rogue_header, payload, signature = rogue.split(".")
    swapped = f"{b64({**_unb64(rogue_header), 'x5c': header['x5c']})}.{payload}.{signature}"
    assert refusal(verifier, swapped).reason == "TOKEN_BAD_SIGNATURE"


def test_a_certificate_that_has_expired_signs_nothing(
    mesh_ca: CertificateAuthority, tmp_path: Path, verifier: DelegationVerifier
) -> None:
    now = datetime.now(UTC)
    expired = mesh_ca.sign(
        "service-planner",
        uris=[PLANNER],
        not_before=now - timedelta(days=2),
        not_after=now - timedelta(days=1),
        out_dir=tmp_path,
    )
    assert refusal(verifier, step(issuer_of(expired))).reason == "TOKEN_SIGNER_UNTRUSTED"


def test_alg_none_is_refused(planner: DelegationIssuer, verifier: DelegationVerifier) -> None:
    header, payload, _ = segments(step(planner))
    unsigned = f"{b64({**header, 'alg': 'none'})}.{b64(payload)}."
    error = refusal(verifier, unsigned)
    assert isinstance(error, UnauthenticatedError) and error.reason == "TOKEN_ALGORITHM_REFUSED"


def test_hs256_keyed_with_the_planners_public_key_is_refused(
    issue_identity: IssueIdentity, planner: DelegationIssuer, verifier: DelegationVerifier
) -> None:
    # The classic key-confusion forgery: anyone holding the public certificate computes this MAC.
    cert = issue_identity("service", "planner")
    header, payload, _ = segments(step(planner))
    signing_input = f"{b64({**header, 'alg': 'HS256'})}.{b64({**payload, 'sub': 'admin'})}"
    for secret in (cert.cert_path.read_bytes(), _public_pem(cert)):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert refusal(verifier, f"{signing_input}.{b64(mac)}").reason == "TOKEN_ALGORITHM_REFUSED"


def test_a_tampered_payload_is_refused(planner: DelegationIssuer, verifier: DelegationVerifier) -> None:
    header, payload, signature = step(planner, scopes=["orders:read"]).split(".")
    for change in ({"scope": "orders:read pii:read"}, {"sub": "someone-else"}, {"task_id": "task-2"}):
        tampered = f"{header}.{b64({**_unb64(payload), **change})}.{signature}"
        error = refusal(verifier, tampered)
        assert isinstance(error, UnauthenticatedError) and error.reason == "TOKEN_BAD_SIGNATURE"


def test_a_lifetime_over_five_minutes_is_refused_even_when_correctly_signed(
    issue_identity: IssueIdentity, planner: DelegationIssuer, verifier: DelegationVerifier
) -> None:
    cert = issue_identity("service", "planner")
    header, payload, _ = segments(step(planner))
    key = serialization.load_pem_private_key(cert.key_path.read_bytes(), password=None)
    long_lived = jwt.encode(
        {**payload, "exp": payload["iat"] + 3600},
        key,  # type: ignore[arg-type]  # an EC key, as PyJWT wants for ES256
        algorithm="ES256",
        headers={"typ": header["typ"], "x5c": header["x5c"]},
    )
    assert refusal(verifier, long_lived).reason == "TOKEN_LIFETIME_TOO_LONG"


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "W10.e30.", "x" * 20_000])
def test_garbage_is_refused_as_malformed(verifier: DelegationVerifier, garbage: str) -> None:
    error = refusal(verifier, garbage)
    assert isinstance(error, UnauthenticatedError) and error.reason == "TOKEN_MALFORMED"


# --- cache and rotation ---------------------------------------------------------------------------------------


def test_verdicts_are_cached_by_token_hash_and_bounded(
    planner: DelegationIssuer, mesh_ca: CertificateAuthority
) -> None:
    verifier = DelegationVerifier(
        ca_file=mesh_ca.ca_path, trust_domain=TRUST_DOMAIN, audience=CRM, max_cached=8
    )
    token = step(planner)
    first = verifier.verify(token)
    assert verifier.verify(token) is first  # a repeated token is a dict lookup, not a second verification
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert refusal(verifier, forged).reason == refusal(verifier, forged).reason == "TOKEN_BAD_SIGNATURE"
    for _ in range(20):
        verifier.verify(step(planner))
    assert len(verifier) <= 8


def test_a_rotated_planner_certificate_signs_new_tokens(
    mesh_ca: CertificateAuthority, tmp_path: Path, verifier: DelegationVerifier
) -> None:
    first = mesh_ca.issue("service", "planner", out_dir=tmp_path)
    issuer = issuer_of(first)
    before = segments(step(issuer))[0]["x5c"]
    mesh_ca.issue("service", "planner", out_dir=tmp_path)  # new key and certificate at the same paths
    token = step(issuer)
    assert segments(token)[0]["x5c"] != before
    assert verifier.verify(token).issuer == PLANNER


def _public_pem(cert: IssuedCertificate) -> bytes:
    key = serialization.load_pem_private_key(cert.key_path.read_bytes(), password=None).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- what a skill sees ----------------------------------------------------------------------------------------


class WhoIn(BaseModel):
    question: str = "who"


class WhoOut(BaseModel):
    subject: str
    refusal: str


class Who(Agent):
    """A skill that does not need a user, but reports the delegation it was given."""

    card = AgentInfo(name="who", namespace="testing", version="1.0.0", purpose="who")

    @skill(description="Say whom this call acts for")
    async def who(self, request: WhoIn, ctx: SkillContext) -> WhoOut:
        return WhoOut(subject=ctx.delegation.subject if ctx.delegation else "", refusal=ctx.delegation_refusal)


async def test_a_skill_sees_verified_claims_and_a_bad_token_does_not_fail_the_call(
    planner: DelegationIssuer, mesh_ca: CertificateAuthority
) -> None:
    verifier = DelegationVerifier(ca_file=mesh_ca.ca_path, trust_domain=TRUST_DOMAIN, audience=CRM)
    runner = SkillRunner(Who(Settings(trust_domain=TRUST_DOMAIN)), verifier=verifier)

    async def ask(token: str, task_id: str = "task-1") -> dict[str, Any]:
        call = Invocation(skill="who", input={}, task_id=task_id, caller=PLANNER, delegation_token=token)
        return (await runner.invoke(call)).output

    assert await ask(step(planner)) == {"subject": "user-42", "refusal": ""}
    assert await ask(step(planner), task_id="task-2") == {"subject": "", "refusal": "TOKEN_WRONG_TASK"}
    assert await ask("forged") == {"subject": "", "refusal": "TOKEN_MALFORMED"}
    assert await ask("") == {"subject": "", "refusal": ""}
    unverified = SkillRunner(Who(Settings(trust_domain=TRUST_DOMAIN)))  # no verifier: no token is accepted
    outcome = await unverified.invoke(Invocation(skill="who", input={}, delegation_token=step(planner)))
    assert outcome.output == {"subject": "", "refusal": "TOKEN_NOT_VERIFIABLE"}


def test_a_token_whose_signer_is_revoked_is_refused_even_once_cached(
    planner: DelegationIssuer, verifier: DelegationVerifier, issue_identity: IssueIdentity
) -> None:
    from agentmesh.security import RevocationSet

    revocations = RevocationSet()
    verifier.revocations = revocations
    token = step(planner)
    claims = verifier.verify(token)  # accepted, and its verdict cached
    serial = x509_serial(issue_identity("service", "planner"))
    assert claims.issuer_serial == serial

    revocations.replace([], [serial], revision=1)  # the planner's certificate leaked: its serial is revoked
    error = refusal(verifier, token)
    assert isinstance(error, UnauthenticatedError) and error.reason == "TOKEN_SIGNER_REVOKED"
    assert f"serial {serial:x}" in error.message

    revocations.replace([PLANNER], [], revision=2)  # or the whole identity
    assert refusal(verifier, step(planner)).reason == "TOKEN_SIGNER_REVOKED"

    revocations.replace([], [], revision=3)  # lifted: the same token verifies again
    assert verifier.verify(token).subject == "user-42"


def x509_serial(cert: IssuedCertificate) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert.cert_path.read_bytes()).serial_number
