"""``agentmesh token issue``: mint a dev OAuth2 access token the gateway accepts (dev JWKS under HOME)."""

from __future__ import annotations

import argparse
import shlex
import sys

# The sample call `agentmesh up` prints: a ticket the shipped support playbook answers (its input schema wants
# {"ticket": {"text": ...}}, the CRM step an email; a bare goal such as "My blender arrived broken" matches no playbook at all).
SAMPLE_GOAL = "Answer a support ticket"
SAMPLE_INPUT = (
    '{"ticket": {"email": "maria.lopez@example.com", "subject": "Broken blender", '
    '"text": "My blender arrived broken (order NW-10482). I would like a refund."}}'
)
_DEFAULT_SCOPES = "tasks:submit tasks:read conversations:read conversations:write agents:read audit:read"


def how_to_call(settings: object) -> str:
    """Lines ``agentmesh up`` prints: a dev token command and a grpcurl call through the gateway.

    Makes the dev signing key and JWKS if they do not exist yet, so the gateway can verify the first token.
    """
    from agentmesh._settings import Settings
    from agentmesh.services.gateway.devtokens import DevIssuer

    assert isinstance(settings, Settings)
    issuer = DevIssuer.from_settings(settings)
    if not issuer.jwks_path.exists():
        issuer.rotate()
    ca = settings.home / "ca" / "ca.pem"
    gateway = "" if settings.gateway_port == 7443 else f" --gateway localhost:{settings.gateway_port}"
    return (
        "TOKEN=$(agentmesh token issue --subject you)\n"
        f'grpcurl -cacert {ca} -H "authorization: Bearer $TOKEN" localhost:{settings.gateway_port} list\n'
        f"agentmesh submit {shlex.quote(SAMPLE_GOAL)} --playbook support --input {shlex.quote(SAMPLE_INPUT)} "
        f'--token "$TOKEN"{gateway}'
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the actions of ``agentmesh token``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    issue = actions.add_parser(
        "issue",
        help="print a signed dev access token (makes the dev signing key and JWKS on first use)",
        description="Print a dev access token signed by HOME/dev-jwks/signing-key.pem; the gateway verifies it "
        "with HOME/dev-jwks/jwks.json unless AGENTMESH_GATEWAY_JWKS names another JWKS.",
    )
    issue.add_argument("--subject", default="dev-user", help="the end user (sub claim; default dev-user)")
    issue.add_argument("--tenant", default="default", help="tenant claim (default: default)")
    issue.add_argument(
        "--scope", default=_DEFAULT_SCOPES, help=f"space-separated scopes (default: {_DEFAULT_SCOPES!r}; add 'approve')"
    )
    issue.add_argument("--ttl", type=float, default=3600.0, help="seconds the token is valid (default 3600)")
    actions.add_parser("rotate", help="make a new dev signing key; the JWKS keeps the previous one")


def run(args: argparse.Namespace) -> int:
    """Print the token (only the token on stdout, so `$(agentmesh token issue)` works) or rotate the key."""
    from agentmesh._settings import Settings

    # The CLI is the composition root: the dev issuer lives with the gateway that trusts it.
    from agentmesh.services.gateway.devtokens import DevIssuer

    issuer = DevIssuer.from_settings(Settings.from_env())
    if args.action == "rotate":
        print(f"new dev signing key {issuer.rotate()}; JWKS {issuer.jwks_path}")
        return 0
    fresh = not issuer.jwks_path.exists()
    print(issuer.issue(subject=args.subject, tenant=args.tenant, scopes=args.scope.split(), ttl_seconds=args.ttl))
    if fresh:  # the token is fine only for a gateway trusting this new key: say where it is (stderr, not in $(...))
        print(
            f"agentmesh token: made a new dev signing key; its JWKS is {issuer.jwks_path.absolute()}. A gateway "
            "accepts these tokens only if it uses that JWKS: run this where `agentmesh up` runs, or set "
            "AGENTMESH_HOME to the mesh's home",
            file=sys.stderr,
        )
    return 0
