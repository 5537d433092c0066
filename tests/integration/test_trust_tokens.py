"""The CRM agent over mTLS, attacked from inside the mesh: personal data leaves it only under a valid step
token that the planner signed for this agent and this task, and an idempotent replay never hands a result
to another identity or to a call under another (or no) delegation — not even while the first call runs.

Tokens are minted by ``agentmesh.security`` acting as the gateway and the planner (the test CA's
certificates), as the real services will.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client import REGISTRY

from agentmesh._channel import create_channel
from agentmesh._errors import InvalidArgumentError, from_rpc_error
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.agents.crm import CrmAgent
from agentmesh.security import (
    CertificateAuthority,
    CredentialFiles,
    DelegationIssuer,
    TokenKind,
    credential_paths,
)
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from tests.fixtures.certs import TRUST_DOMAIN, IssueIdentity

TASK = "task-7"
PII = {"customer_id": "C-1002", "include_pii": True}
EMAIL, MASKED_EMAIL = "tom.becker@example.com", "t***@e***.com"


@dataclass
class Crm:
    """The served CRM agent, the planner's view of it, and a back-office service also allowed to invoke."""

    runtime: AgentRuntime
    db: Path
    settings: Settings
    planner: agent_pb2_grpc.AgentServiceStub
    backoffice: agent_pb2_grpc.AgentServiceStub

    @property
    def spiffe_id(self) -> str:
        return self.runtime.spiffe_id

    def issuer(self, kind: str, name: str) -> DelegationIssuer:
        return DelegationIssuer.from_settings(self.settings, kind, name)

    def step_token(self, issuer: DelegationIssuer | None = None, **overrides: Any) -> str:
        """A pii:read step token of TASK for this CRM, signed as the planner unless ``issuer`` says otherwise."""
        fields: dict[str, Any] = {
            "kind": TokenKind.STEP,
            "audience": self.spiffe_id,
            "subject": "user-42",
            "tenant": "acme",
            "scopes": ["pii:read"],
            "actor_chain": [f"spiffe://{TRUST_DOMAIN}/service/planner"],
            "task_id": TASK,
            "step_id": "lookup",
        }
        return (issuer or self.issuer("service", "planner")).issue(**{**fields, **overrides})

    async def lookup(
        self, token: str = "", *, key: str = "", as_: str = "planner", data: dict[str, Any] | None = None
    ) -> agent_pb2.InvokeResponse:
        request = agent_pb2.InvokeRequest(
            skill="lookup_customer",
            task_id=TASK,
            step_id="lookup",
            idempotency_key=key,
            delegation_token=token,
        )
        request.input.update(PII if data is None else data)
        stub = self.planner if as_ == "planner" else self.backoffice
        return await stub.Invoke(request, timeout=10)


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in policy plus one rule: a back-office service may invoke agents too (a second identity)."""
    text = resources.files("agentmesh.security").joinpath("default_policy.yaml").read_text(encoding="utf-8")
    text += (
        "\n  - name: a back-office service invokes agents (test only)\n"
        '    identities: ["spiffe://{trust_domain}/service/backoffice"]\n'
        "    methods: [/agentmesh.v1.AgentService/Invoke]\n"
    )
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
async def crm(
    mesh_settings: Settings, issue_identity: IssueIdentity, policy_file: Path, tmp_path: Path
) -> AsyncIterator[Crm]:
    for kind, name in (
        ("agent", "support/crm"),
        ("service", "planner"),
        ("service", "gateway"),
        ("service", "backoffice"),
    ):
        issue_identity(kind, name)
    settings = mesh_settings.replace(authz_policy_file=str(policy_file))
    db = tmp_path / "crm.db"
    agent = CrmAgent(settings, database_url=f"sqlite+aiosqlite:///{db}")
    async with AgentRuntime(agent, port=0, register=False) as runtime:
        planner = create_channel(runtime.address, settings, kind="service", name="planner")
        backoffice = create_channel(runtime.address, settings, kind="service", name="backoffice")
        async with planner, backoffice:
            yield Crm(
                runtime,
                db,
                settings,
                agent_pb2_grpc.AgentServiceStub(planner),
                agent_pb2_grpc.AgentServiceStub(backoffice),
            )


def customer(response: agent_pb2.InvokeResponse) -> dict[str, Any]:
    output = json_format.MessageToDict(response.output)
    assert output["found"]
    assert output["masked"] is (output["customer"]["email"] != EMAIL)
    customer: dict[str, Any] = output["customer"]
    return customer


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("agentmesh_crm_refused_tokens_total", {"reason": reason}) or 0.0


# --- tokens -----------------------------------------------------------------------------------------------------


async def test_a_valid_planner_step_token_for_this_agent_and_task_unmasks(crm: Crm) -> None:
    assert customer(await crm.lookup(crm.step_token()))["email"] == EMAIL
    assert customer(await crm.lookup())["email"] == MASKED_EMAIL  # no token: masked, not refused outright


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The decoded header and payload of ``token``."""
    header, payload = (
        json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in token.split(".")[:2]
    )
    return header, payload


def expired(crm: Crm) -> str:
    planner = credential_paths(crm.settings, "service", "planner")
    return crm.step_token(DelegationIssuer(planner, clock=lambda: time.time() - 600))


def wrong_audience(crm: Crm) -> str:
    return crm.step_token(audience=f"spiffe://{TRUST_DOMAIN}/agent/support/responder")


def non_issuer(crm: Crm) -> str:
    return crm.step_token(crm.issuer("agent", "support/crm"))  # the agent's own, valid, certificate


def other_ca(crm: Crm, tmp_path: Path) -> str:
    rogue = CertificateAuthority.init(tmp_path / "rogue", TRUST_DOMAIN).issue("service", "planner")
    return crm.step_token(DelegationIssuer(CredentialFiles(rogue.cert_path, rogue.key_path, rogue.ca_path)))


def alg_none(crm: Crm) -> str:
    header, payload = _parts(crm.step_token())
    return f"{_b64({**header, 'alg': 'none'})}.{_b64(payload)}."


def hs256_public_key(crm: Crm) -> str:
    header, payload = _parts(crm.step_token())
    signing_input = f"{_b64({**header, 'alg': 'HS256'})}.{_b64(payload)}"
    secret = credential_paths(crm.settings, "service", "planner").cert.read_bytes()  # public: anyone has it
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def tampered(crm: Crm) -> str:
    header, payload, signature = crm.step_token(scopes=["orders:read"]).split(".")
    _, claims = _parts(f"{header}.{payload}.")
    return f"{header}.{_b64({**claims, 'scope': 'orders:read pii:read'})}.{signature}"


def other_task(crm: Crm) -> str:
    return crm.step_token(task_id="task-8")


def end_user(crm: Crm) -> str:
    return crm.issuer("service", "gateway").issue(
        kind=TokenKind.END_USER, audience=crm.spiffe_id, subject="user-42", tenant="acme", scopes=["pii:read"]
    )


def no_pii_scope(crm: Crm) -> str:
    return crm.step_token(scopes=["orders:read"])


FORGERIES: dict[str, tuple[Callable[..., str], str]] = {
    "expired": (expired, "TOKEN_EXPIRED"),
    "wrong audience": (wrong_audience, "TOKEN_WRONG_AUDIENCE"),
    "signed by a non-issuer (an agent)": (non_issuer, "TOKEN_ISSUER_NOT_ALLOWED"),
    "signed under another CA": (other_ca, "TOKEN_SIGNER_UNTRUSTED"),
    "alg=none": (alg_none, "TOKEN_ALGORITHM_REFUSED"),
    "HS256 keyed with the public key": (hs256_public_key, "TOKEN_ALGORITHM_REFUSED"),
    "tampered payload": (tampered, "TOKEN_BAD_SIGNATURE"),
    "for another task": (other_task, "TOKEN_WRONG_TASK"),
    "an end-user token, not a step token": (end_user, "NOT_A_STEP_TOKEN"),
    "a step token without pii:read": (no_pii_scope, "SCOPE_MISSING"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_a_refused_token_gets_masked_fields_and_is_counted(
    crm: Crm, forgery: str, tmp_path: Path
) -> None:
    make, reason = FORGERIES[forgery]
    token = make(crm, tmp_path) if make is other_ca else make(crm)
    before = refused(reason)
    assert customer(await crm.lookup(token))["email"] == MASKED_EMAIL
    assert refused(reason) == before + 1


# --- replays ------------------------------------------------------------------------------------------------------


def reused(error: grpc.aio.AioRpcError) -> bool:
    mesh_error = from_rpc_error(error)
    return (
        isinstance(mesh_error, InvalidArgumentError)
        and mesh_error.reason == "IDEMPOTENCY_KEY_REUSED"
        and mesh_error.field == "idempotency_key"
    )


async def assert_refused_replay(call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reused(failure.value)
    assert EMAIL not in (failure.value.details() or "")


async def test_a_pii_result_is_replayed_only_to_the_same_caller_user_and_scopes(crm: Crm) -> None:
    first = await crm.lookup(crm.step_token(), key="k-1")
    assert customer(first)["email"] == EMAIL and not first.replayed
    # The planner retrying with a fresh token for the same user and scopes gets the stored result.
    again = await crm.lookup(crm.step_token(), key="k-1")
    assert again.replayed and customer(again)["email"] == EMAIL
    # Across identities: another workload allowed to invoke, presenting even the same token.
    await assert_refused_replay(crm.lookup(crm.step_token(), key="k-1", as_="backoffice"))
    # Across tokens: none, a forged one, the same user's end-user token, another user, other scopes.
    await assert_refused_replay(crm.lookup("", key="k-1"))
    await assert_refused_replay(crm.lookup(end_user(crm), key="k-1"))
    await assert_refused_replay(crm.lookup(tampered(crm), key="k-1"))
    await assert_refused_replay(crm.lookup(crm.step_token(subject="user-43"), key="k-1"))
    await assert_refused_replay(crm.lookup(crm.step_token(scopes=["pii:read", "orders:read"]), key="k-1"))


async def test_replays_are_refused_while_the_first_call_is_still_running(crm: Crm) -> None:
    # Hold the CRM's database with an exclusive lock so the first lookup waits inside the skill.
    lock = sqlite3.connect(crm.db, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        first = asyncio.ensure_future(crm.lookup(crm.step_token(), key="k-running"))
        deadline = time.monotonic() + 5
        while crm.runtime.runner.in_flight == 0:  # poll until the first call holds the key
            assert time.monotonic() < deadline and not first.done()
            await asyncio.sleep(0.005)
        await assert_refused_replay(crm.lookup(crm.step_token(), key="k-running", as_="backoffice"))
        await assert_refused_replay(crm.lookup("", key="k-running"))
        await assert_refused_replay(crm.lookup(crm.step_token(subject="user-43"), key="k-running"))
        assert not first.done()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    result = await first
    assert customer(result)["email"] == EMAIL and not result.replayed
