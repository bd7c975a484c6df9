"""Bounded LRU cache of encoded slices (``ToolSession``), so repeated requests skip the encoder."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from lib.tools.base import ToolSession


class SessionCache:
    """LRU of sessions keyed by (image, slice, backend, windowing, ...), bounded by embedding bytes.

    A key being encoded by one thread is not encoded again by another: the second caller waits for
    the first (per-key lock), so concurrent clicks on a fresh slice cost one encoder pass.

    Args:
        max_bytes: total embedding memory kept; the least recently used sessions are evicted first.
            One LiteMedSAM slice embedding is 4 MiB (256×64×64 float32).
    """

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        if max_bytes <= 0:
            raise ValueError(f"session cache size must be > 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, ToolSession] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get_or_start(self, key: Hashable, start: Callable[[], ToolSession]) -> tuple[ToolSession, bool]:
        """Return (session, was_cached); ``start()`` runs only on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key], True
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:  # encoded by another thread while we waited
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key], True
            session = start()
            with self._lock:
                self.misses += 1
                self._items[key] = session
                self._items.move_to_end(key)
                self._key_locks.pop(key, None)
                self._evict()
        return session, False

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _evict(self) -> None:
        while len(self._items) > 1 and self.nbytes > self.max_bytes:
            self._items.popitem(last=False)
