"""At most N holders per key at once: a bound on what one caller keeps open (streams, watches) in one process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["KeySlots"]

K = TypeVar("K", bound=Hashable)


class KeySlots(Generic[K]):
    """``take(key)`` a slot, ``give_back(key)`` when done; a key holding ``limit`` slots gets none until one is
    given back. Keys holding none are forgotten, so the map is as large as the keys holding slots."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[K] = Counter()

    def held(self, key: K) -> int:
        """Slots ``key`` holds now."""
        return self._held.get(key, 0)

    def take(self, key: K) -> bool:
        """Take a slot for ``key``; False (nothing taken) when it already holds ``limit``."""
        if self._held[key] >= self.limit:
            return False
        self._held[key] += 1
        return True

    def give_back(self, key: K) -> None:
        """Give back a slot taken with :meth:`take`."""
        left = self._held[key] - 1
        if left > 0:
            self._held[key] = left
        else:
            del self._held[key]
