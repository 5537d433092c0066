"""`agentmesh certs init|issue|show`: the dev mesh CA and workload certificates (never prints key material)."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d`` or a number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid TTL {text!r}; use e.g. 90s, 30m, 24h, 7d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``certs`` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, help="mesh home folder (default: AGENTMESH_HOME or .agentmesh)")
    actions = parser.add_subparsers(dest="certs_action", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init", parents=[common], help="create the mesh CA (ECDSA P-256) under HOME/ca/"
    )
    init.add_argument(
        "--trust-domain", help="SPIFFE trust domain (default: AGENTMESH_TRUST_DOMAIN or agentmesh.local)"
    )
    replace = init.add_mutually_exclusive_group()
    replace.add_argument(
        "--force", action="store_true", help="replace an existing CA (every certificate must be reissued)"
    )
    replace.add_argument(
        "--if-missing", action="store_true", help="keep an existing CA and succeed (for deploy jobs)"
    )

    issue = actions.add_parser(
        "issue", parents=[common], help="issue a workload certificate with one SPIFFE URI SAN"
    )
    issue.add_argument("--kind", required=True, choices=["service", "agent", "client"], help="workload kind")
    issue.add_argument(
        "--name",
        required=True,
        help="workload name, e.g. registry or ops; an agent's is NAMESPACE/NAME from its card, e.g. support/triage",
    )
    issue.add_argument(
        "--ttl", type=parse_ttl, default=timedelta(hours=24), help="lifetime, e.g. 24h (default), 7d"
    )
    issue.add_argument("--dns", action="append", help="DNS name SAN, repeatable (default: localhost)")
    issue.add_argument(
        "--ip", action="append", help="IP address SAN, repeatable (default: 127.0.0.1 and ::1)"
    )
    issue.add_argument("--out-dir", type=Path, help="where to write the files (default: HOME/certs/)")

    show = actions.add_parser("show", help="print a certificate's identity, issuer and validity")
    show.add_argument("file", type=Path, help="a PEM certificate (or bundle)")


def run(args: argparse.Namespace) -> int:
    """Run one ``certs`` action; errors are one line on stderr and exit code 1."""
    from agentmesh._errors import MeshError
    from agentmesh._settings import Settings

    settings = Settings.from_env()
    home: Path = getattr(args, "home", None) or settings.home
    try:
        if args.certs_action == "init":
            return _init(
                home, args.trust_domain or settings.trust_domain, force=args.force, if_missing=args.if_missing
            )
        if args.certs_action == "issue":
            return _issue(home, args)
        return _show(args.file)
    except MeshError as exc:
        print(f"agentmesh certs {args.certs_action}: {exc.message}", file=sys.stderr)
        return 1


def _init(home: Path, trust_domain: str, *, force: bool, if_missing: bool) -> int:
    from agentmesh.security import CertificateAuthority, ca_paths

    if if_missing and ca_paths(home)[0].exists():
        ca = CertificateAuthority.load_or_init(home, trust_domain)  # refuses a CA of another trust domain
        print(f"mesh CA for trust domain {ca.trust_domain} already exists: {ca.ca_path}")
        return 0
    ca = CertificateAuthority.init(home, trust_domain, force=force)
    print(f"created mesh CA for trust domain {ca.trust_domain}")
    print(f"  trust bundle: {ca.ca_path}")
    print(f"  CA key:       {ca.ca_path.parent / 'ca-key.pem'} (0600, keep it secret)")
    return 0


def _issue(home: Path, args: argparse.Namespace) -> int:
    from agentmesh.security import CertificateAuthority

    ca = CertificateAuthority.load(home)
    issued = ca.issue(
        args.kind,
        args.name,
        ttl=args.ttl,
        dns=args.dns or ("localhost",),
        ips=args.ip or ("127.0.0.1", "::1"),
        out_dir=args.out_dir,
    )
    print(f"issued {issued.spiffe_id}")
    print(f"  certificate: {issued.cert_path}")
    print(f"  key:         {issued.key_path} (0600)")
    print(f"  CA bundle:   {issued.ca_path}")
    print(f"  expires:     {issued.not_after:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def _show(path: Path) -> int:
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from agentmesh._errors import InvalidArgumentError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise InvalidArgumentError(f"{path} holds a private key; `certs show` prints certificates only")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidArgumentError(f"{path} is not a PEM certificate") from None
    now = datetime.now(UTC)
    for index, cert in enumerate(certs):
        if index:
            print()
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        state = (
            "expired" if end < now else "not yet valid" if start > now else f"valid, {_left(end - now)} left"
        )
        print(f"identity:    {', '.join(uris) or '(no URI SAN: not a mesh identity)'}")
        print(f"subject:     {cert.subject.rfc4514_string()}")
        print(f"issuer:      {cert.issuer.rfc4514_string()}")
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        if dns or ips:
            print(f"hosts:       {', '.join([*dns, *ips])}")
        print(f"not before:  {start:%Y-%m-%d %H:%M:%S} UTC")
        print(f"not after:   {end:%Y-%m-%d %H:%M:%S} UTC ({state})")
        print(f"serial:      {cert.serial_number:x}")
        print(f"sha256:      {cert.fingerprint(hashes.SHA256()).hex(':')}")
    return 0


def _left(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"
