"""The mesh CA: an ECDSA P-256 root that issues workload certificates with one SPIFFE URI SAN.

Layout under the mesh home folder (``Settings.home``)::

    ca/ca.pem              the trust bundle (the CA certificate; during a CA rotation, old and new)
    ca/ca-key.pem          the CA private key (0600)
    certs/<kind>-<name>.pem, certs/<kind>-<name>-key.pem   workload certificate and key (0600)

An agent's name is ``namespace/name``; its files are ``agent-<namespace>.<name>.pem`` (DNS labels have no dots).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentmesh._errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError
from agentmesh.security._identity import KINDS, SpiffeId

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "ca_paths",
    "workload_paths",
    "write_private_file",
    "write_public_file",
]

_CA_LIFETIME = timedelta(days=3650)
# Certificates start a little in the past so a peer whose clock lags does not see "not yet valid".
_CLOCK_SKEW = timedelta(minutes=5)


def ca_paths(home: Path) -> tuple[Path, Path]:
    """``(bundle, key)`` paths of the CA under the mesh home folder."""
    return home / "ca" / "ca.pem", home / "ca" / "ca-key.pem"


def workload_paths(directory: Path, kind: str, name: str) -> tuple[Path, Path]:
    """``(certificate, key)`` paths of workload ``kind``/``name`` in a certs folder."""
    stem = f"{kind}-{name.replace('/', '.')}"
    return directory / f"{stem}.pem", directory / f"{stem}-key.pem"


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with mode 0600 (the file never exists with wider permissions)."""
    _atomic_write(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with mode 0644 (certificates, trust bundles)."""
    _atomic_write(path, data, 0o644)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    # Readers (the server's reload check) must never see a half-written PEM file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class IssuedCertificate:
    """Where an issued workload certificate, its key and the trust bundle live."""

    cert_path: Path
    key_path: Path
    ca_path: Path
    spiffe_id: str  # the URI SAN; "" when the certificate was deliberately built without exactly one
    not_after: datetime


class CertificateAuthority:
    """The mesh CA. Build it with :meth:`init` (new) or :meth:`load` (existing)."""

    def __init__(
        self, home: Path, trust_domain: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.home = home
        self.trust_domain = trust_domain
        self.certificate = cert
        self._key = key

    @property
    def ca_path(self) -> Path:
        """The trust bundle file peers verify against."""
        return ca_paths(self.home)[0]

    @property
    def certs_dir(self) -> Path:
        """Default folder of issued workload certificates."""
        return self.home / "certs"

    @classmethod
    def init(cls, directory: Path, trust_domain: str, *, force: bool = False) -> CertificateAuthority:
        """Create a new CA under ``directory`` (the mesh home); refuses to replace one unless ``force``."""
        SpiffeId.check_trust_domain(trust_domain)
        bundle, key_path = ca_paths(directory)
        if not force and (bundle.exists() or key_path.exists()):
            raise AlreadyExistsError(
                f"a mesh CA already exists in {bundle.parent}; replacing it (force=True, `agentmesh certs init --force`) "
                "invalidates every certificate it issued"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Agentic Mesh"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Agentic Mesh CA {trust_domain}"),
            ]
        )
        now = datetime.now(UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            # The trust domain travels with the CA so `load` needs nothing else.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private_file(key_path, _key_pem(key))
        write_public_file(bundle, cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, trust_domain, cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Load the CA under ``directory`` (the mesh home)."""
        bundle, key_path = ca_paths(directory)
        if not bundle.exists() or not key_path.exists():
            raise FailedPreconditionError(f"no mesh CA in {bundle.parent}; run `agentmesh certs init` first")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPreconditionError(f"{key_path} is not an ECDSA key")
        # During a CA rotation the bundle holds several certificates; the signing one matches the key.
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for cert in x509.load_pem_x509_certificates(bundle.read_bytes()):
            der = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if der == public:
                return cls(directory, _trust_domain_of(cert), cert, key)
        raise FailedPreconditionError(f"no certificate in {bundle} matches {key_path}")

    @classmethod
    def load_or_init(cls, directory: Path, trust_domain: str) -> CertificateAuthority:
        """The CA under ``directory``, created first if there is none (what `agentmesh up` needs)."""
        if ca_paths(directory)[0].exists():
            ca = cls.load(directory)
            if ca.trust_domain != trust_domain:
                raise FailedPreconditionError(
                    f"the mesh CA in {directory / 'ca'} is for trust domain {ca.trust_domain!r}, not {trust_domain!r}"
                )
            return ca
        return cls.init(directory, trust_domain)

    def ensure(
        self, kind: str, name: str, *, renew_before: timedelta = timedelta(hours=1), **issue_options: Any
    ) -> IssuedCertificate:
        """The current certificate of ``kind``/``name`` if it is ours and valid for ``renew_before``; else a new one."""
        identity = SpiffeId(self.trust_domain, kind, name)
        spiffe_id = identity.uri
        cert_path, key_path = workload_paths(issue_options.get("out_dir") or self.certs_dir, kind, name)
        if cert_path.exists() and key_path.exists():
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                cert.verify_directly_issued_by(self.certificate)
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                current = san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id]
                # Certificates from before identity host names: reissue so replicas verify by identity.
                current = current and identity.hostname in san.get_values_for_type(x509.DNSName)
            except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
                current = False  # damaged, from another CA, or another identity: reissue
            if current and cert.not_valid_after_utc - datetime.now(UTC) > renew_before:
                return IssuedCertificate(
                    cert_path, key_path, self.ca_path, spiffe_id, cert.not_valid_after_utc
                )
        return self.issue(kind, name, **issue_options)

    def issue(
        self,
        kind: str,
        name: str,
        *,
        ttl: timedelta = timedelta(hours=24),
        dns: Sequence[str] = ("localhost",),
        ips: Sequence[str] = ("127.0.0.1", "::1"),
        out_dir: Path | None = None,
    ) -> IssuedCertificate:
        """Issue a workload certificate whose only URI SAN is ``spiffe://<td>/<kind>/<name>``.

        Its DNS SANs are the identity's :attr:`SpiffeId.hostname` (what clients of a replicated service verify)
        and ``dns``.
        """
        if kind not in KINDS:
            raise InvalidArgumentError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}", field="kind")
        spiffe_id = SpiffeId(self.trust_domain, kind, name)  # validates the name
        if ttl <= timedelta(0):
            raise InvalidArgumentError(f"ttl must be positive, not {ttl}", field="ttl")
        suffix = f".{self.trust_domain}"
        claimed = [host for host in dns if host.lower().endswith(suffix) and host.lower() != spiffe_id.hostname]
        if claimed:  # names under the trust domain stand for identities (SpiffeId.hostname): never free-form
            raise InvalidArgumentError(
                f"DNS names under {self.trust_domain} are identity names; {claimed[0]!r} is not {kind}/{name}'s",
                field="dns",
            )
        now = datetime.now(UTC)
        return self.sign(
            workload_paths(Path(), kind, name)[0].stem,
            uris=[spiffe_id.uri],
            dns=[spiffe_id.hostname, *(host for host in dns if host.lower() != spiffe_id.hostname)],
            ips=ips,
            not_before=now - _CLOCK_SKEW,
            not_after=now + ttl,
            out_dir=out_dir,
            common_name=f"{kind}/{name}",
        )

    def sign(
        self,
        stem: str,
        *,
        uris: Sequence[str],
        not_before: datetime,
        not_after: datetime,
        dns: Sequence[str] = ("localhost",),
        ips: Sequence[str] = ("127.0.0.1", "::1"),
        out_dir: Path | None = None,
        common_name: str | None = None,
    ) -> IssuedCertificate:
        """Low level: sign a leaf with exactly these SANs and validity, written as ``<stem>.pem``/``<stem>-key.pem``.

        :meth:`issue` is the normal path; tests use this to build deliberately bad certificates
        (no URI SAN, two URI SANs, expired, not yet valid).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
        names += [x509.DNSName(host) for host in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name or stem),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if names:
            # SPIFFE: the SAN is critical when the subject carries no identity of its own; non-critical is accepted too.
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        directory = out_dir or self.certs_dir
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        # Key first: a reader that sees the new certificate must find its key already there.
        write_private_file(key_path, _key_pem(key))
        write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return IssuedCertificate(
            cert_path=cert_path,
            key_path=key_path,
            ca_path=self.ca_path,
            spiffe_id=uris[0] if len(uris) == 1 else "",
            not_after=cert.not_valid_after_utc,
        )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _trust_domain_of(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise FailedPreconditionError(
            "the mesh CA certificate names no trust domain (no spiffe:// URI SAN)"
        ) from None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri.removeprefix("spiffe://").rstrip("/")
    raise FailedPreconditionError("the mesh CA certificate names no trust domain (no spiffe:// URI SAN)")
