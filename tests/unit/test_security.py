"""The mesh CA, SPIFFE identities, the authorization policy and `agentmesh certs`, without servers."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

import agentmesh.security
from agentmesh._errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from agentmesh._settings import Settings
from agentmesh.cli import main
from agentmesh.security import (
    AuthzPolicy,
    CertificateAuthority,
    ServerSecurity,
    SpiffeId,
    channel_credentials,
)
from agentmesh.security._identity import _CURRENT

TD = "agentmesh.test"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- CA and certificates -------------------------------------------------------------------------


def test_ca_keys_and_workload_keys_are_private(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path, TD)
    issued = ca.issue("agent", "docs/summarizer")
    assert _mode(tmp_path / "ca" / "ca-key.pem") == 0o600
    assert _mode(issued.key_path) == 0o600
    assert _mode(issued.cert_path) == 0o644
    assert issued.cert_path == tmp_path / "certs" / "agent-docs.summarizer.pem"
    assert issued.key_path == tmp_path / "certs" / "agent-docs.summarizer-key.pem"
    assert issued.ca_path == tmp_path / "ca" / "ca.pem"


def test_issued_certificate_has_exactly_one_uri_san_the_spiffe_id(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path, TD)
    issued = ca.issue("service", "registry", ttl=timedelta(hours=2), dns=["registry.mesh"], ips=["10.0.0.7"])
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/service/registry"]
    # The identity's host name first (replica clients verify it), then the DNS names asked for.
    assert san.get_values_for_type(x509.DNSName) == [f"registry.service.{TD}", "registry.mesh"]
    assert issued.spiffe_id == f"spiffe://{TD}/service/registry"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(hours=2) <= lifetime <= timedelta(hours=2, minutes=10)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_ca_refuses_to_overwrite_itself_unless_forced(tmp_path: Path) -> None:
    first = CertificateAuthority.init(tmp_path, TD)
    with pytest.raises(AlreadyExistsError, match="already exists"):
        CertificateAuthority.init(tmp_path, TD)
    assert CertificateAuthority.load(tmp_path).certificate == first.certificate
    second = CertificateAuthority.init(tmp_path, TD, force=True)
    assert second.certificate != first.certificate


def test_load_recovers_trust_domain_and_signs_verifiable_certificates(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path, "corp.example")
    ca = CertificateAuthority.load(tmp_path)
    assert ca.trust_domain == "corp.example"
    leaf = x509.load_pem_x509_certificate(ca.issue("client", "ops").cert_path.read_bytes())
    leaf.verify_directly_issued_by(ca.certificate)


def test_load_without_a_ca_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FailedPreconditionError, match="agentmesh certs init"):
        CertificateAuthority.load(tmp_path)


@pytest.mark.parametrize(
    ("kind", "name"),
    # An agent's name is NAMESPACE/NAME from its card: two DNS labels.
    [("robot", "x"), ("agent", "a/b/c"), ("agent", "summarizer"), ("agent", "Docs/x"), ("agent", ""), ("agent", "-x")],
)
def test_issue_refuses_bad_kinds_and_names(tmp_path: Path, kind: str, name: str) -> None:
    ca = CertificateAuthority.init(tmp_path, TD)
    with pytest.raises(InvalidArgumentError):
        ca.issue(kind, name)


def test_missing_credentials_say_which_command_creates_them(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path, TD)
    with pytest.raises(FailedPreconditionError, match="agentmesh certs issue --kind agent --name ghost"):
        channel_credentials(Settings(home=tmp_path), "agent", "ghost")


# --- identities ----------------------------------------------------------------------------------


def test_spiffe_id_parses_mesh_identities() -> None:
    parsed = SpiffeId.parse(f"spiffe://{TD}/agent/docs/summarizer", TD)
    assert (parsed.trust_domain, parsed.kind, parsed.name) == (TD, "agent", "docs/summarizer")
    assert str(parsed) == parsed.uri == f"spiffe://{TD}/agent/docs/summarizer"
    assert SpiffeId(TD, "agent", "docs/summarizer") == parsed


@pytest.mark.parametrize(
    "uri",
    [
        "https://agentmesh.test/agent/x",
        "spiffe://other.test/agent/x",
        "spiffe://agentmesh.test/agent",
        "spiffe://agentmesh.test/agent/x/y/z",
        "spiffe://agentmesh.test/agent/x",
        "spiffe://agentmesh.test/robot/x",
        "spiffe://agentmesh.test/agent/",
    ],
)
def test_spiffe_id_refuses_anything_else(uri: str) -> None:
    with pytest.raises(UnauthenticatedError):
        SpiffeId.parse(uri, TD)


def test_require_identity_names_both_identities() -> None:
    me = SpiffeId(TD, "agent", "docs/summarizer")
    token = _CURRENT.set(me)
    try:
        assert agentmesh.security.require_identity(me.uri) == me
        with pytest.raises(PermissionDeniedError) as denied:
            agentmesh.security.require_identity(f"spiffe://{TD}/agent/docs/translator")
        assert me.uri in denied.value.message and f"spiffe://{TD}/agent/docs/translator" in denied.value.message
    finally:
        _CURRENT.reset(token)
    with pytest.raises(PermissionDeniedError, match="no verified identity"):
        agentmesh.security.require_identity(me.uri)


# --- authorization policy ------------------------------------------------------------------------

REG = "/agentmesh.v1.RegistryService/"
AGENT = "/agentmesh.v1.AgentService/"
TASK = "/agentmesh.v1.TaskService/"
AUDIT = "/agentmesh.v1.AuditService/"


@pytest.mark.parametrize(
    ("who", "method", "allowed"),
    [
        ("agent/docs/summarizer", REG + "RegisterAgent", True),
        ("agent/docs/summarizer", REG + "Heartbeat", True),
        ("agent/docs/summarizer", REG + "DeregisterAgent", True),
        ("agent/docs/summarizer", REG + "DiscoverAgents", True),
        ("agent/docs/summarizer", AGENT + "Describe", True),
        ("agent/docs/summarizer", AGENT + "Invoke", False),
        # Sub-tasks: the policy lets agents submit; the planner accepts only a running parent step's token.
        ("agent/docs/summarizer", TASK + "SubmitTask", True),
        ("agent/docs/summarizer", TASK + "CancelTask", False),
        ("agent/docs/summarizer", REG + "SetRoutingPolicy", False),
        ("service/planner", AGENT + "Invoke", True),
        ("service/planner", AGENT + "InvokeStream", True),
        ("service/planner", REG + "ReportOutcome", True),
        ("service/planner", REG + "RegisterAgent", False),
        ("service/gateway", AGENT + "Invoke", False),
        ("service/gateway", TASK + "SubmitTask", True),
        ("service/gateway", AUDIT + "ListAuditRecords", True),
        ("service/registry", TASK + "SubmitTask", False),
        ("client/ops", TASK + "SubmitTask", True),
        ("client/ops", REG + "SetRoutingPolicy", True),
        ("client/ops", AUDIT + "VerifyAuditChain", True),
        ("client/ops", AGENT + "Invoke", False),
        ("client/ops", REG + "RegisterAgent", False),
        ("client/ops", "/grpc.health.v1.Health/Check", True),
        ("agent/x", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
    ],
)
def test_default_policy(who: str, method: str, allowed: bool) -> None:
    assert AuthzPolicy.default(TD).allows(f"spiffe://{TD}/{who}", method) is allowed


def test_default_policy_is_bound_to_its_trust_domain() -> None:
    assert not AuthzPolicy.default(TD).allows("spiffe://other.test/service/planner", AGENT + "Invoke")


def test_policy_file_replaces_the_default_and_denial_names_identity_and_method(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "rules:\n"
        "  - name: translators may invoke each other\n"
        "    identities: ['spiffe://{trust_domain}/agent/docs/translator-*']\n"
        "    methods: ['/agentmesh.v1.AgentService/*']\n"
    )
    policy = AuthzPolicy.load(path, trust_domain=TD)
    assert policy.allows(f"spiffe://{TD}/agent/docs/translator-fr", AGENT + "Invoke")
    assert not policy.allows(f"spiffe://{TD}/service/planner", AGENT + "Invoke")
    with pytest.raises(PermissionDeniedError) as denied:
        policy.check(f"spiffe://{TD}/service/planner", AGENT + "Invoke")
    assert (
        f"spiffe://{TD}/service/planner" in denied.value.message and AGENT + "Invoke" in denied.value.message
    )


@pytest.mark.parametrize(
    "document",
    [
        "just text",
        "rules: {}",
        "rules:\n  - identities: []\n    methods: ['/a.B/C']",
        "rules:\n  - identities: ['spiffe://x/*']\n    methods: ['a.B/C']",
        "rules:\n  - identities: ['spiffe://x/*']\n    methods: ['/a.B/C']\n    effect: deny",
        "rules: [\n",
    ],
)
def test_malformed_policies_are_refused_at_load(document: str) -> None:
    with pytest.raises(InvalidArgumentError, match="authorization policy"):
        AuthzPolicy.from_yaml(document, trust_domain=TD)


class _FakeContext:
    """Only what the check reads: the auth context gRPC core fills from the TLS handshake."""

    def __init__(self, properties: dict[str, list[bytes]]) -> None:
        self._properties = properties

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._properties


def test_server_security_sets_current_identity_and_caches_allowed_calls() -> None:
    security = ServerSecurity(Settings(trust_domain=TD), "service", "registry")
    context = _FakeContext({"peer_spiffe_id": [f"spiffe://{TD}/agent/docs/summarizer".encode()]})
    token = _CURRENT.set(None)
    try:
        security.check(REG + "Heartbeat", context)
        assert agentmesh.security.current_identity() == SpiffeId(TD, "agent", "docs/summarizer")
        security.check(REG + "Heartbeat", context)
        assert len(security._allowed) == 1
        with pytest.raises(PermissionDeniedError):
            security.check(AGENT + "Invoke", context)
        with pytest.raises(UnauthenticatedError, match="no client certificate"):
            security.check(REG + "Heartbeat", _FakeContext({}))
    finally:
        _CURRENT.reset(token)


def test_server_security_reads_the_policy_file_from_settings(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - identities: ['spiffe://{trust_domain}/client/*']\n    methods: ['/*']\n")
    security = ServerSecurity(Settings(trust_domain=TD, authz_policy_file=str(path)), "service", "registry")
    assert security.policy.source == str(path)
    assert security.policy.allows(f"spiffe://{TD}/client/ops", AGENT + "Invoke")


# --- `agentmesh certs` ---------------------------------------------------------------------------


def test_certs_cli_init_issue_show_never_prints_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(tmp_path)
    assert main(["certs", "init", "--home", home, "--trust-domain", TD]) == 0
    assert main(["certs", "init", "--home", home]) == 1  # refuses to replace the CA
    assert "--force" in capsys.readouterr().err
    assert main(["certs", "init", "--home", home, "--trust-domain", TD, "--if-missing"]) == 0
    assert "already exists" in capsys.readouterr().out
    assert (
        main(["certs", "issue", "--home", home, "--kind", "agent", "--name", "docs/summarizer", "--ttl", "2h"])
        == 0
    )
    cert = tmp_path / "certs" / "agent-docs.summarizer.pem"
    assert main(["certs", "show", str(cert)]) == 0
    assert main(["certs", "show", str(tmp_path / "certs" / "agent-docs.summarizer-key.pem")]) == 1
    captured = capsys.readouterr()
    assert f"spiffe://{TD}/agent/docs/summarizer" in captured.out
    assert "valid, 2.0 hours left" in captured.out
    assert "holds a private key" in captured.err
    assert "PRIVATE KEY" not in captured.out + captured.err
    assert _mode(tmp_path / "certs" / "agent-docs.summarizer-key.pem") == 0o600


def test_certs_cli_help_lists_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["certs", "issue", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--kind" in out and "--ttl" in out and "--dns" in out


def test_certs_cli_rejects_a_bad_ttl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["certs", "issue", "--home", str(tmp_path), "--kind", "agent", "--name", "x", "--ttl", "soon"])
    assert "invalid TTL" in capsys.readouterr().err


def test_ensure_reuses_a_valid_certificate_and_renews_one_about_to_expire(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_init(tmp_path, TD)
    assert CertificateAuthority.load_or_init(tmp_path, TD).certificate == ca.certificate
    first = ca.ensure("agent", "docs/summarizer")
    assert ca.ensure("agent", "docs/summarizer") == first
    expiring = ca.issue("agent", "docs/summarizer", ttl=timedelta(minutes=30))
    renewed = ca.ensure("agent", "docs/summarizer", renew_before=timedelta(hours=1))
    assert renewed.not_after - expiring.not_after > timedelta(hours=23)
    with pytest.raises(FailedPreconditionError, match="trust domain"):
        CertificateAuthority.load_or_init(tmp_path, "other.test")


def test_public_port_lets_callers_without_a_certificate_through_with_no_identity() -> None:
    security = ServerSecurity(Settings(trust_domain=TD), "service", "gateway", allow_anonymous=True)
    token = _CURRENT.set(SpiffeId(TD, "client", "stale"))
    try:
        security.check(TASK + "SubmitTask", _FakeContext({}))
        assert agentmesh.security.current_identity() is None
        with pytest.raises(UnauthenticatedError, match="no URI SAN"):
            security.check(TASK + "SubmitTask", _FakeContext({"x509_pem_cert": [_pem_without_uri()]}))
    finally:
        _CURRENT.reset(token)


def _pem_without_uri() -> bytes:
    import tempfile
    from datetime import UTC, datetime

    with tempfile.TemporaryDirectory() as home:
        ca = CertificateAuthority.init(Path(home), TD)
        now = datetime.now(UTC)
        return ca.sign(
            "no-uri", uris=[], not_before=now, not_after=now + timedelta(hours=1)
        ).cert_path.read_bytes()


def test_new_channels_get_new_credentials_only_after_the_files_change(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path, TD)
    ca.issue("client", "ops")
    settings = Settings(home=tmp_path, trust_domain=TD)
    first = channel_credentials(settings, "client", "ops")
    assert channel_credentials(settings, "client", "ops") is first
    ca.issue("client", "ops")  # rotation: new key and certificate on disk
    assert channel_credentials(settings, "client", "ops") is not first
