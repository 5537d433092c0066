"""A bounded LRU+TTL cache of skill results keyed by (skill, idempotency key), deduplicating in-flight calls.

Semantics (what a caller sees):

- The first call with a key runs the skill; a later call with the same key and the same input gets the
  stored result (``replayed=True``) without running the skill again.
- A call that arrives while the first is still running waits for it and shares its outcome.
- Only successes are stored: a failed or cancelled run frees the key, so a retry runs the skill again.
- A replay is bound to who asked, not only to what: the :class:`CallFingerprint` covers the caller's SPIFFE
  id, the verified delegation (token kind, tenant, subject and scopes; not the token itself, so a retry under
  a fresh token for the same user replays) and the input. Reusing a key with any of them different is
  ``INVALID_ARGUMENT`` on field ``idempotency_key`` (reason ``IDEMPOTENCY_KEY_REUSED``), also while the
  first call still runs: it is a caller bug or an attempt to read someone else's result, and running or
  replaying either would be wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar, cast

from agentmesh._errors import InvalidArgumentError

__all__ = ["CallFingerprint", "IdempotencyCache", "call_fingerprint", "fingerprint"]

T = TypeVar("T")


def fingerprint(data: Any) -> str:
    """A stable digest of a JSON value (key order does not matter)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CallFingerprint:
    """Digests of what a replay must match: who called, for whom (verified delegation), and with what."""

    caller: str
    delegation: str
    input: str

    def differences(self, other: CallFingerprint) -> list[str]:
        """Names of the parts that differ from ``other``."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def call_fingerprint(*, caller: str, delegation: Sequence[str] | None, input: Any) -> CallFingerprint:
    """The fingerprint of a call by ``caller`` (SPIFFE id), acting for ``delegation`` (e.g. tenant, subject
    and sorted scopes of the verified token; None without one), with JSON ``input``.
    """
    return CallFingerprint(
        caller=caller,
        delegation="" if delegation is None else fingerprint(list(delegation)),
        input=fingerprint(input),
    )


_PARTS = {
    "caller": "another caller",
    "delegation": "another delegation (token kind, subject or scopes)",
    "input": "a different input",
}


def _reuse(
    key: str, skill: str, stored: str | CallFingerprint, given: str | CallFingerprint
) -> InvalidArgumentError:
    if isinstance(stored, CallFingerprint) and isinstance(given, CallFingerprint):
        parts = given.differences(stored)
    else:
        parts = ["input"]
    return InvalidArgumentError(
        f"idempotency key {key!r} was already used for skill {skill!r} by "
        + " and ".join(_PARTS[p] for p in parts),
        field="idempotency_key",
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata={"skill": skill, "differs": ",".join(parts)},
    )


@dataclass
class _Entry(Generic[T]):
    fingerprint: str | CallFingerprint
    expires: float
    result: T | None = None
    running: asyncio.Future[T] | None = None


class IdempotencyCache(Generic[T]):
    """Results of finished runs (at most ``max_entries``, each kept ``ttl`` seconds) and runs in flight."""

    def __init__(
        self, *, max_entries: int = 10_000, ttl: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("max_entries must be >= 1 and ttl > 0")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def run(
        self, skill: str, key: str, call: str | CallFingerprint, compute: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """``compute()`` once per (skill, key); returns ``(result, replayed)``.

        ``call`` is the :class:`CallFingerprint` (or a plain input digest) a later use of the key must match.
        """
        slot = (skill, key)
        while True:
            entry = self._lookup(slot)
            if entry is None:
                break
            if entry.fingerprint != call:
                raise _reuse(key, skill, entry.fingerprint, call)
            if entry.running is None:
                self._entries.move_to_end(slot)
                return cast(T, entry.result), True  # a finished entry holds its result
            try:
                # shield: a waiter that gives up must not cancel the run the first caller is waiting on.
                return await asyncio.shield(entry.running), True
            except _Abandoned:
                continue  # the first caller was cancelled; the key is free again, so one waiter takes over
        return await self._own(slot, call, compute), False

    async def _own(
        self, slot: tuple[str, str], call: str | CallFingerprint, compute: Callable[[], Awaitable[T]]
    ) -> T:
        running: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        entry: _Entry[T] = _Entry(fingerprint=call, expires=self._clock() + self.ttl, running=running)
        self._entries[slot] = entry
        self._evict()
        try:
            result = await compute()
        except asyncio.CancelledError:
            self._release(slot, entry)
            running.set_exception(_Abandoned())
            running.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        except BaseException as exc:
            self._release(slot, entry)
            running.set_exception(exc)
            running.exception()
            raise
        entry.result, entry.running = result, None
        entry.expires = self._clock() + self.ttl
        running.set_result(result)
        return result

    def _lookup(self, slot: tuple[str, str]) -> _Entry[T] | None:
        entry = self._entries.get(slot)
        if entry is not None and entry.running is None and entry.expires <= self._clock():
            del self._entries[slot]
            return None
        return entry

    def _release(self, slot: tuple[str, str], entry: _Entry[T]) -> None:
        if self._entries.get(slot) is entry:
            del self._entries[slot]

    def _evict(self) -> None:
        # Oldest first; runs in flight are never evicted (their waiters hold them), so skip past them.
        excess = len(self._entries) - self.max_entries
        if excess <= 0:
            return
        victims: list[tuple[str, str]] = []
        for slot, entry in self._entries.items():
            if entry.running is None:
                victims.append(slot)
                if len(victims) == excess:
                    break
        for slot in victims:
            del self._entries[slot]


class _Abandoned(Exception):
    """The run a waiter was sharing was cancelled; the waiter should try again."""
