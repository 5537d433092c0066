"""Revocation: the SPIFFE ids and certificate serials every mesh server refuses, followed from the registry.

The registry is the book of record (``agentmesh agents revoke``). Every other server keeps a copy in a
:class:`RevocationSet`, which its authorization check consults per call with a set lookup (no network hop),
and a :class:`RevocationFollower` keeps that copy equal to the registry's over ``WatchRevocations``: the
registry sends the whole set on connect and again after each change, the follower reconnects with jittered
backoff when the stream breaks, and it keeps the last set it saw in a file under the mesh home so a
restarted process refuses revoked callers even before the registry answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from agentmesh._errors import InvalidArgumentError, MeshError
from agentmesh._settings import Settings

if TYPE_CHECKING:
    import grpc

__all__ = [
    "RevocationFollower",
    "RevocationSet",
    "certificate_serial",
    "format_serial",
    "parse_serial",
    "peer_certificate_serial",
]

logger = logging.getLogger(__name__)

_PEER_CERT = "x509_pem_cert"
_MAX_CACHED_SERIALS = 65_536
# Between reconnection attempts: 0.2 s doubling to 2 s, jittered (a registry restart is noticed in seconds).
_INITIAL_BACKOFF = 0.2
_MAX_BACKOFF = 2.0
_MAX_SERIAL_DIGITS = 40  # RFC 5280: at most 20 octets

_serials: dict[bytes, int] = {}


def parse_serial(text: str) -> int:
    """A certificate serial from hexadecimal text (``0x`` prefix and ``:`` separators allowed)."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    if not digits or len(digits) > _MAX_SERIAL_DIGITS or any(c not in "0123456789abcdef" for c in digits):
        raise InvalidArgumentError(
            f"certificate serial {text[:64]!r} must be 1-40 hexadecimal digits (as `agentmesh certs show` prints it)",
            field="certificate_serial",
        )
    serial = int(digits, 16)
    if serial <= 0:
        raise InvalidArgumentError("certificate serial must be positive", field="certificate_serial")
    return serial


def format_serial(serial: int) -> str:
    """The canonical text of a serial: lowercase hexadecimal without separators."""
    return f"{serial:x}"


def certificate_serial(pem: bytes) -> int:
    """The serial number of a PEM certificate; parsed once per distinct certificate and remembered."""
    serial = _serials.get(pem)
    if serial is None:
        serial = x509.load_pem_x509_certificate(pem).serial_number
        if len(_serials) >= _MAX_CACHED_SERIALS:
            _serials.clear()
        _serials[pem] = serial
    return serial


def peer_certificate_serial(context: grpc.aio.ServicerContext[Any, Any]) -> int | None:
    """The serial of the certificate the caller of this RPC presented (``None`` without one)."""
    pem = next(iter(context.auth_context().get(_PEER_CERT) or ()), None)
    if not pem:
        return None
    try:
        return certificate_serial(pem)
    except ValueError:
        return None


class RevocationSet:
    """Revoked SPIFFE ids and certificate serials, checked per call in O(1).

    The sets are replaced whole (never mutated), so a reader always sees one consistent version; listeners
    (e.g. a server's cache of allowed callers) are told after each replacement.
    """

    def __init__(self) -> None:
        self.ids: frozenset[str] = frozenset()
        self.serials: frozenset[int] = frozenset()
        self.revision = 0
        self.known = False  # True once loaded from the registry or from a saved copy
        self._listeners: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self.ids) + len(self.serials)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the set."""
        self._listeners.append(listener)

    def replace(self, ids: Iterable[str], serials: Iterable[int], revision: int) -> bool:
        """Make the set exactly ``ids`` and ``serials`` as of ``revision``; returns whether anything changed."""
        new_ids, new_serials = frozenset(ids), frozenset(serials)
        self.known = True
        self.revision = revision
        if new_ids == self.ids and new_serials == self.serials:
            return False
        self.ids, self.serials = new_ids, new_serials
        for listener in self._listeners:
            listener()
        return True

    def is_revoked(self, spiffe_id: str, serial: int | None = None) -> bool:
        """Whether ``spiffe_id`` (or the certificate ``serial``) is revoked."""
        return spiffe_id in self.ids or (serial is not None and serial in self.serials)

    def to_json(self) -> dict[str, Any]:
        """A JSON document of the set (what the follower saves)."""
        return {
            "revision": self.revision,
            "spiffe_ids": sorted(self.ids),
            "certificate_serials": sorted(format_serial(s) for s in self.serials),
        }

    def load_json(self, document: dict[str, Any]) -> None:
        """Replace the set with a document written by :meth:`to_json`."""
        self.replace(
            (str(i) for i in document.get("spiffe_ids", [])),
            (parse_serial(str(s)) for s in document.get("certificate_serials", [])),
            int(document.get("revision", 0)),
        )


class RevocationFollower:
    """Keeps a :class:`RevocationSet` equal to the registry's, for as long as a server runs.

    ::

        revocations = RevocationSet()
        follower = RevocationFollower(settings, revocations, kind="service", name="planner")
        await follower.start()          # loads the saved copy, then follows the registry in the background
        ...
        await follower.stop()

    It connects as ``kind``/``name`` (the server's own certificate) to ``address`` (default
    ``settings.registry_address``; a list of replicas or a DNS name works as for any channel) and never gives up:
    a broken stream is reopened after a jittered backoff of 0.2 s to 2 s.
    """

    def __init__(
        self,
        settings: Settings,
        revocations: RevocationSet,
        *,
        kind: str,
        name: str,
        address: str | None = None,
        cache_file: Path | None = None,
    ) -> None:
        self.revocations = revocations
        self._settings = settings
        self._kind = kind
        self._name = name
        self.address = address or settings.registry_address
        self.cache_file = cache_file if cache_file is not None else default_cache_file(settings, self.address)
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self.updates = 0  # sets received from the registry
        self.failures = 0  # consecutive failed connections
        self._saved_once = False

    @property
    def synced(self) -> bool:
        """Whether the set came from the registry at least once since start."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        """Wait until the registry sent its set (bound it with ``asyncio.timeout``)."""
        await self._synced.wait()

    async def start(self) -> None:
        """Load the saved copy (if any) and start following the registry in the background."""
        self._load_saved()
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name=f"{self._name}-revocations")

    async def stop(self) -> None:
        """Stop following (the set keeps its last value)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        from agentmesh._registry_client import RegistryClient  # the client imports security: import late

        while True:
            client: RegistryClient | None = None
            try:
                client = RegistryClient(self._settings, kind=self._kind, name=self._name, address=self.address)
                async for revision, ids, serials in client.watch_revocations():
                    self._apply(revision, ids, serials)
                    self.failures = 0
                problem = "the registry ended the revocation stream"
            except MeshError as exc:
                problem = f"{exc.code.name} {exc.message}"
            except Exception as exc:  # a bug must not end following: log it and keep trying
                logger.exception("following revocations at %s failed unexpectedly", self.address)
                problem = type(exc).__name__
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()
            self.failures += 1
            # The first failure is worth a warning; a registry that stays away is said once, not every 2 s.
            level = logging.WARNING if self.failures == 1 else logging.DEBUG
            logger.log(level, "revocations from %s: %s; reconnecting", self.address, problem)
            await asyncio.sleep(_backoff(self.failures))

    def _apply(self, revision: int, ids: Iterable[str], serials: Iterable[int]) -> None:
        changed = self.revocations.replace(ids, serials, revision)
        self.updates += 1
        self._synced.set()
        if changed:
            logger.info(
                "revocation set now %d identities, %d certificates (revision %d)",
                len(self.revocations.ids),
                len(self.revocations.serials),
                revision,
            )
        if changed or not self._saved_once:
            self._save()

    def _load_saved(self) -> None:
        try:
            document = json.loads(self.cache_file.read_text(encoding="utf-8"))
            self.revocations.load_json(document)
        except FileNotFoundError:
            return
        except (OSError, ValueError, MeshError, TypeError, AttributeError):
            logger.warning("ignoring an unreadable saved revocation set at %s", self.cache_file)

    def _save(self) -> None:
        from agentmesh.security._ca import write_public_file

        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_public_file(self.cache_file, json.dumps(self.revocations.to_json()).encode())
            self._saved_once = True
        except OSError as exc:  # a read-only home: following still works, only the restart copy is missing
            logger.debug("cannot save the revocation set to %s: %s", self.cache_file, exc)


def default_cache_file(settings: Settings, address: str) -> Path:
    """Where a follower of the registry at ``address`` keeps its last set: one file per registry (mesh)."""
    digest = hashlib.sha256(f"{settings.trust_domain}|{address}".encode()).hexdigest()[:12]
    return settings.home / "revocations" / f"{digest}.json"


def _backoff(failures: int) -> float:
    ceiling = min(_MAX_BACKOFF, _INITIAL_BACKOFF * 2 ** min(failures - 1, 8))
    return random.uniform(ceiling / 2, ceiling)
