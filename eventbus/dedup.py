"""De-duplication: each handler sees each message id at most once to completion.

Brokers deliver at least once, so a message can arrive twice (a redelivery
after a crash, a retry because a sibling handler failed). With a cache the
dispatcher *claims* ``(service, handler, message id)`` before calling the
handler, marks it *done* after success, and *releases* it after a failure so
that the retry can run. A claim is a lease: if the worker dies mid-handler
the lease expires and another worker may take the message.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Protocol


class Claim(enum.Enum):
    """The answer to a claim."""

    #: The caller holds the lease and must run the handler.
    CLAIMED = "claimed"
    #: The handler already succeeded on this message: skip it.
    DONE = "done"
    #: Another worker holds a live lease: try again later.
    BUSY = "busy"


class DedupCache(Protocol):
    """What the dispatcher needs from a de-duplication cache.

    ``lease`` (how long a claim holds) and ``ttl`` (how long a success is
    remembered) are settings of the cache itself.
    """

    def claim(self, key: str) -> Claim:
        """Atomically take the lease on ``key`` unless it is done or leased."""
        ...

    def done(self, key: str) -> None:
        """Record that the handler succeeded on ``key`` (kept for the TTL)."""
        ...

    def release(self, key: str) -> None:
        """Give up the lease on ``key`` after a failure."""
        ...


DEFAULT_LEASE = 60.0
DEFAULT_TTL = 7 * 24 * 3600.0


class MemoryDedupCache:
    """An in-process cache, for tests and single-process deployments."""

    def __init__(self, *, lease: float = DEFAULT_LEASE, ttl: float = DEFAULT_TTL) -> None:
        self.lease = lease
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Claim, float]] = {}
        self._next_sweep = time.monotonic() + 60.0

    def claim(self, key: str) -> Claim:
        """Take the lease on ``key`` unless it is done or leased."""
        now = time.monotonic()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            entry = self._entries.get(key)
            if entry is not None and entry[1] > now:
                return Claim.DONE if entry[0] is Claim.DONE else Claim.BUSY
            self._entries[key] = (Claim.CLAIMED, now + self.lease)
            return Claim.CLAIMED

    def done(self, key: str) -> None:
        """Remember ``key`` as done for the TTL."""
        with self._lock:
            self._entries[key] = (Claim.DONE, time.monotonic() + self.ttl)

    def release(self, key: str) -> None:
        """Drop the lease on ``key`` (a done mark stays)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is Claim.CLAIMED:
                del self._entries[key]

    def _sweep(self, now: float) -> None:
        self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
        self._next_sweep = now + 60.0
