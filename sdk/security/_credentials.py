"""mTLS credentials from files, reloaded when the files change (rotation without restart).

Servers use grpc's dynamic server credentials: before each TLS handshake gRPC asks our fetcher, which
compares the files' (inode, mtime, size) with what it loaded and rereads them only when they changed.
Clients get channel credentials rebuilt the same way, so every new channel presents the current certificate.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agentmesh._errors import FailedPreconditionError
from agentmesh._settings import Settings
from agentmesh.security._ca import ca_paths, workload_paths

__all__ = ["add_port", "channel_credentials", "credential_paths"]

logger = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class CredentialFiles:
    """This workload's certificate, key and the mesh trust bundle."""

    cert: Path
    key: Path
    ca: Path

    def stamp(self) -> _Stamp:
        """(inode, mtime, size) of each file: cheap to take before every handshake.

        The inode catches atomic replacements (our writers) even within the file system's mtime granularity.
        """
        stats = (os.stat(self.cert), os.stat(self.key), os.stat(self.ca))
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """``(cert, key, ca)`` PEM bytes; raises ValueError when the key does not match the certificate.

        A rotation writes the key and the certificate one after the other, so a reader may catch the pair
        half-way: checking them here keeps a server on its previous (working) pair until both are new.
        """
        cert, key, ca = self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()
        leaf = x509.load_pem_x509_certificate(cert)
        private = serialization.load_pem_private_key(key, password=None)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(
            serialization.Encoding.DER, spki
        ) != private.public_key().public_bytes(serialization.Encoding.DER, spki):
            raise ValueError(f"{self.key} does not match {self.cert}")
        x509.load_pem_x509_certificates(ca)  # raises on a damaged bundle
        return cert, key, ca

    def stamp_or_explain(self, kind: str, name: str) -> _Stamp:
        """Like :meth:`stamp`, but a missing file becomes an error that says what to run."""
        try:
            return self.stamp()
        except FileNotFoundError:
            self.read_or_explain(kind, name)  # raises the explanatory error
            raise

    def read_or_explain(self, kind: str, name: str) -> tuple[bytes, bytes, bytes]:
        """Like :meth:`read`, but a missing or broken file becomes an error that says what to run."""
        try:
            return self.read()
        except FileNotFoundError as exc:
            hint = (
                "run `agentmesh certs init`"
                if Path(exc.filename) == self.ca
                else f"run `agentmesh certs issue --kind {kind} --name {name}`"
            )
            missing = Path(exc.filename).absolute()
            home = missing.parent.parent  # <home>/certs/<file> or <home>/ca/ca.pem
            if not home.exists():  # not even a mesh home there: usually the wrong directory, not a missing file
                hint = (
                    f"there is no mesh home at {home} (AGENTMESH_HOME, ./.agentmesh by default): run where "
                    f"`agentmesh up` runs or set AGENTMESH_HOME, or {hint.removeprefix('run ')}"
                )
            raise FailedPreconditionError(f"no {missing.name} for {kind}/{name} at {missing}; {hint}") from None
        except ValueError as exc:
            raise FailedPreconditionError(f"credentials of {kind}/{name} are unusable: {exc}") from None


def credential_paths(settings: Settings, kind: str, name: str) -> CredentialFiles:
    """Where ``kind``/``name`` finds its credentials: explicit settings files, else the mesh home layout."""
    default_cert, default_key = workload_paths(settings.home / "certs", kind, name)
    return CredentialFiles(
        cert=Path(settings.cert_file) if settings.cert_file else default_cert,
        key=Path(settings.key_file) if settings.key_file else default_key,
        ca=Path(settings.ca_file) if settings.ca_file else ca_paths(settings.home)[0],
    )


class _ServerCertificateReloader:
    """The cert-config fetcher of grpc's dynamic server credentials (called before every handshake)."""

    def __init__(self, files: CredentialFiles, kind: str, name: str) -> None:
        self._files = files
        self._label = f"{kind}/{name}"
        self._stamp = files.stamp_or_explain(kind, name)
        material = files.read_or_explain(kind, name)
        self.initial = self._configuration(*material)
        self._last_problem = ""
        self._log_loaded("loaded", material[0])

    @staticmethod
    def _configuration(cert: bytes, key: bytes, ca: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs inside gRPC core for each new connection: never raise, keep serving the last good pair.
        try:
            stamp = self._files.stamp()
            if stamp == self._stamp:
                return None
            material = self._files.read()
        except Exception as exc:  # half-written rotation, file briefly missing: retry on the next handshake
            problem = f"{type(exc).__name__}: {exc}"
            if problem != self._last_problem:
                self._last_problem = problem
                logger.warning("%s keeps its current certificate; reload failed: %s", self._label, problem)
            return None
        self._stamp = stamp
        self._last_problem = ""
        self._log_loaded("reloaded", material[0])
        return self._configuration(*material)

    def _log_loaded(self, verb: str, cert_pem: bytes) -> None:
        cert = x509.load_pem_x509_certificate(cert_pem)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            identity = ", ".join(san.get_values_for_type(x509.UniformResourceIdentifier)) or "no URI SAN"
        except x509.ExtensionNotFound:
            identity = "no URI SAN"
        expires = cert.not_valid_after_utc
        expired = expires <= datetime.now(UTC)
        logger.log(
            logging.WARNING if expired else logging.INFO,
            "%s %s its certificate from %s: %s, %s %s",
            self._label,
            verb,
            self._files.cert,
            identity,
            "EXPIRED on" if expired else "valid until",
            f"{expires:%Y-%m-%d %H:%M:%S} UTC",
        )


def add_port(
    server: grpc.aio.Server,
    target: str,
    settings: Settings,
    kind: str,
    name: str,
    *,
    require_client_auth: bool = True,
) -> int:
    """Bind ``server`` to ``target`` with mTLS (or plaintext under --insecure-dev) and return the port.

    The certificate and trust bundle are reread from disk when they change, for new connections.
    ``require_client_auth=False`` is for a public TLS port only (the gateway's, where callers bring an
    OAuth2 token instead): clients are then not asked for a certificate, so pair it with
    ``server_security(..., allow_anonymous=True)``.
    """
    if settings.insecure_dev:
        logger.warning(
            "INSECURE (--insecure-dev): %s/%s serves PLAINTEXT on %s with NO client authentication; never do this "
            "outside a local experiment",
            kind,
            name,
            target,
        )
        return server.add_insecure_port(target)
    reloader = _ServerCertificateReloader(credential_paths(settings, kind, name), kind, name)
    credentials = grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader,  # type: ignore[arg-type]  # the stubs miss that a fetcher returns None for "unchanged"
        require_client_authentication=require_client_auth,
    )
    return server.add_secure_port(target, credentials)


# (cert, key, ca) -> (stamp, credentials): a new channel reuses credentials until the files change.
_CHANNEL_CREDENTIALS: dict[CredentialFiles, tuple[_Stamp, grpc.ChannelCredentials]] = {}


def channel_credentials(settings: Settings, kind: str, name: str) -> grpc.ChannelCredentials:
    """mTLS credentials for a client of ``kind``/``name``, rebuilt when its files change (rotation)."""
    files = credential_paths(settings, kind, name)
    stamp = files.stamp_or_explain(kind, name)
    cached = _CHANNEL_CREDENTIALS.get(files)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    cert, key, ca = files.read_or_explain(kind, name)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    _CHANNEL_CREDENTIALS[files] = (stamp, credentials)
    return credentials
