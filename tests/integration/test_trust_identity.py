"""The registry is the identity book of record: an agent's card is accepted only from the identity derived from it.

An agent's SPIFFE id is ``spiffe://<td>/agent/<namespace>/<name>``. Agent x holds a perfectly valid mesh
certificate, yet registering a card named y (any version, a name somebody holds or nobody holds yet, under
its own id or y's) is PERMISSION_DENIED, the message names the id that may, and nothing is stored.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509

from agentmesh._errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from agentmesh.cli import main
from agentmesh.storage import AgentInstance, AgentLease, AgentSkill, AgentVersion, RegistryEvent, Revocation
from agentmesh.storage._registry_models import Agent
from tests.fixtures.certs import TRUST_DOMAIN
from tests.fixtures.registry import RegistryReplica, make_card

TABLES = (Agent, AgentVersion, AgentSkill, AgentInstance, AgentLease, RegistryEvent, Revocation)
TRIAGE_ID = f"spiffe://{TRUST_DOMAIN}/agent/support/triage"


async def _row_counts(registry: RegistryReplica) -> dict[str, int]:
    async with registry.server.engine.connect() as conn:
        return {
            table.__tablename__: int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
            for table in TABLES
        }


@pytest.mark.parametrize(
    ("namespace", "name", "version", "claimed_id"),
    [
        ("support", "triage", "9.0.0", "own"),  # a higher version of a held name, under x's own id
        ("support", "triage", "9.0.0", "theirs"),  # ... or claiming the holder's id
        ("support", "triage", "1.0.0", "theirs"),  # the very version that is live
        ("support", "crm", "1.0.0", "theirs"),  # a name nobody holds yet
        ("finance", "x", "1.0.0", "own"),  # x's own name in another namespace is another agent
    ],
)
async def test_an_agent_cannot_register_a_card_of_another_identity(
    registry: RegistryReplica, namespace: str, name: str, version: str, claimed_id: str
) -> None:
    async with registry.client("agent", "support/triage") as owner:
        await owner.register(make_card("triage"))
    before = await _row_counts(registry)

    expected = f"spiffe://{TRUST_DOMAIN}/agent/{namespace}/{name}"
    intruder_id = f"spiffe://{TRUST_DOMAIN}/agent/support/x"
    card = make_card(name, namespace=namespace, version=version, port=9666)
    card.spiffe_id = intruder_id if claimed_id == "own" else expected
    async with registry.client("agent", "support/x") as intruder:
        with pytest.raises(PermissionDeniedError) as refused:
            await intruder.register(card)
    assert expected in refused.value.message and intruder_id in refused.value.message
    assert refused.value.metadata["expected"] == expected

    assert await _row_counts(registry) == before
    async with registry.client("client", "ops") as ops:
        answer = await ops.discover(names=[f"{namespace}/{name}"])
        assert [c.instance.card.endpoint for c in answer.candidates] == (
            ["127.0.0.1:9000"] if (namespace, name) == ("support", "triage") else []
        )


async def test_every_version_and_instance_of_an_agent_shares_its_derived_identity(
    registry: RegistryReplica,
) -> None:
    async with registry.client("agent", "support/triage") as owner:
        for version, port in (("1.0.0", 9000), ("1.0.0", 9001), ("2.0.0", 9002)):
            reply = await owner.register(make_card("triage", version=version, port=port))
            assert reply.instance.card.spiffe_id == TRIAGE_ID
        # The card must name the derived id itself: anything else is a malformed card, not stored.
        wrong = make_card("triage", version="3.0.0")
        wrong.spiffe_id = f"spiffe://{TRUST_DOMAIN}/agent/triage"
        with pytest.raises(InvalidArgumentError, match=re.escape(TRIAGE_ID)) as refused:
            await owner.register(wrong)
        assert refused.value.field == "card.spiffe_id"
        got = await owner.get_agent("support", "triage", "2.0.0")
        assert [i.card.endpoint for i in got.instances] == ["127.0.0.1:9002"]
        with pytest.raises(NotFoundError, match=re.escape("no version 3.0.0")):
            await owner.get_agent("support", "triage", "3.0.0")


def test_the_certs_cli_issues_an_agent_its_card_derived_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(tmp_path)
    assert main(["certs", "init", "--home", home, "--trust-domain", TRUST_DOMAIN]) == 0
    assert main(["certs", "issue", "--home", home, "--kind", "agent", "--name", "support/triage"]) == 0
    assert TRIAGE_ID in capsys.readouterr().out
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "agent-support.triage.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [TRIAGE_ID]
    # A bare name is not an agent identity: the card's namespace is part of it.
    assert main(["certs", "issue", "--home", home, "--kind", "agent", "--name", "triage"]) == 1
    assert "NAMESPACE/NAME" in capsys.readouterr().err


async def test_revocations_are_audited_in_the_same_transaction_and_the_chain_stays_valid(
    registry: RegistryReplica,
) -> None:
    from agentmesh.audit import verify_chain
    from agentmesh.storage import AuditRecord

    ops_id = f"spiffe://{TRUST_DOMAIN}/client/ops"
    async with registry.client("client", "ops") as ops:
        await ops.revoke(spiffe_id=TRIAGE_ID, reason="key leaked in a paste")
        await ops.unrevoke(spiffe_id=TRIAGE_ID)
    async with registry.server.engine.connect() as conn:
        rows = (await conn.execute(sa.select(AuditRecord).order_by(AuditRecord.sequence))).all()
    trail = [(r.action, r.resource, r.actor) for r in rows]
    resource = f"revocations/spiffe_id/{TRIAGE_ID}"
    assert ("identity.revoke", resource, ops_id) in trail
    assert ("identity.unrevoke", resource, ops_id) in trail
    revoke = next(r for r in rows if r.action == "identity.revoke")
    assert revoke.detail["reason"] == "key leaked in a paste"
    assert (await verify_chain(registry.server.engine)).valid
