"""Bounded caches of things made from an iteration's frozen artifacts (heads, fine-tuned networks).

Keys name immutable artifacts (an iteration id with its head's blob key, a fine-tuned network's blob key),
so a cached value can never disagree with what another replica would load: nothing is invalidated on a
change, since artifacts do not change. What goes is what is no longer used: the least recently used entry
past the cache's size, and (:meth:`LRU.keep_only`, from each cache's sweep) entries whose iteration was
deleted, so a deleted iteration leaves no cache behind on any replica.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from tagvision.clock import SYSTEM, Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
SWEEP_SECONDS = 10.0  # how often caches look for entries of deleted iterations


class LRU(Generic[K, V]):
    """A thread-safe map of at most ``size`` entries; the least recently used goes first. ``on_drop(key)`` is
    called for each entry that leaves."""

    def __init__(self, size: int, on_drop: Callable[[K], None] | None = None) -> None:
        self.size = size
        self.on_drop = on_drop
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.RLock()

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The cached value, else ``make()``'s, kept (made under the cache's lock: once, however many ask)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = self._items[key] = make()
            while len(self._items) > self.size:
                self._drop(next(iter(self._items)))
            return value

    def cached(self) -> list[K]:
        with self._lock:
            return list(self._items)

    def keep_only(self, keys: Iterable[K]) -> list[K]:
        """Drop every entry not in ``keys``; returns the dropped keys."""
        wanted = set(keys)
        with self._lock:
            gone = [key for key in self._items if key not in wanted]
            for key in gone:
                self._drop(key)
        return gone

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _drop(self, key: K) -> None:
        self._items.pop(key, None)
        if self.on_drop is not None:
            self.on_drop(key)


class Sweeper:
    """Runs ``sweep`` at most once per ``every`` seconds of ``clock``, whoever asks (:meth:`maybe`)."""

    def __init__(self, sweep: Callable[[], object], every: float = SWEEP_SECONDS, clock: Clock = SYSTEM) -> None:
        self.sweep, self.every, self.clock = sweep, every, clock
        self._last = clock.monotonic()
        self._lock = threading.Lock()

    def maybe(self) -> bool:
        with self._lock:
            if self.clock.monotonic() - self._last < self.every:
                return False
            self._last = self.clock.monotonic()
        self.sweep()
        return True
