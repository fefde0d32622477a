"""The JWT replay cache: a client token id (``iss``, ``jti``) is accepted once while it lives.

A cache answers ``seen(iss, jti, expires_at, now)``: True when the id is already remembered and
not expired (a replay), else it remembers the id until ``expires_at`` and answers False, in one
atomic step. Times are seconds since the epoch.

* ``MemoryReplayCache``: one process. What a ``Verifier`` built on its own uses.
* ``StoreReplayCache``: the shared store (the decision-record database, ``DATABASE_URL``), so a
  token replayed to another worker or another instance behind the load balancer is refused too.
  The app factory wires it.

**Store unreachable.** The request is not refused and never gets a 500: the replay check falls
back to this process's in-memory cache (every id the process accepts is also kept there), a
warning is logged without any token content, and ``cds_auth_replay_fallbacks_total`` counts the
request. For the length of the outage a token replayed to *another* worker or instance may be
accepted once there, exactly as with a per-process cache. After a failure the store is tried again
``retry_after`` seconds later (no per-request connect timeout while it is down).
"""
from __future__ import annotations

import hashlib
import heapq
import logging
import math
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Protocol

log = logging.getLogger("cds_service.auth")

# Stored times stay below the year 10000 (datetime's limit); a token "expiring" later is kept until then.
_LATEST = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()
_COLUMN = 256  # jwt_replay.iss / jwt_replay.jti


class ReplayCache(Protocol):
    def seen(self, iss: str, jti: str, expires_at: float, now: float) -> bool: ...


class MemoryReplayCache:
    """Per-process; expired ids are dropped in expiry order (a heap), not by scanning them all."""

    def __init__(self) -> None:
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._lock = threading.Lock()

    def seen(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        key = (iss, jti)
        with self._lock:
            self._drop_expired(now)
            if key in self._expiry:
                return True
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return False

    def known(self, iss: str, jti: str, now: float) -> bool:
        """Remembered and not expired at ``now`` (remembers nothing)."""
        with self._lock:
            self._drop_expired(now)
            return (iss, jti) in self._expiry

    def _drop_expired(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            when, old = heapq.heappop(heap)
            if self._expiry.get(old) == when:
                del self._expiry[old]

    def __len__(self) -> int:
        return len(self._expiry)


class StoreReplayCache:
    """Replay ids in the shared store; this process's ``MemoryReplayCache`` while it is unreachable."""

    def __init__(self, store, *, metrics=None, local: MemoryReplayCache | None = None, retry_after: float = 5.0,
                 purge_interval: float = 60.0, monotonic: Callable[[], float] = time.monotonic):
        self.store = store
        self.metrics = metrics
        self.local = local if local is not None else MemoryReplayCache()
        self.retry_after = retry_after
        self.purge_interval = purge_interval
        self.monotonic = monotonic
        self._down_until = 0.0  # monotonic time before which the store is not tried again
        self._down = False
        self._next_purge = 0.0
        self._lock = threading.Lock()

    def seen(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        # Every id this process accepts is kept in its memory too: a replay to this process is
        # refused without a store round trip, and still refused if the store goes down later.
        if self.local.known(iss, jti, now):
            return True
        if self.monotonic() < self._down_until:
            self._fallback(None)
            return self.local.seen(iss, jti, expires_at, now)
        try:
            fresh = self.store.remember_token(_column(iss), _column(jti), _when(expires_at), _when(now))
        except Exception as exc:  # noqa: BLE001 - never a 500 for the replay check
            with self._lock:
                self._down_until = self.monotonic() + self.retry_after
            self._fallback(exc)
            return self.local.seen(iss, jti, expires_at, now)
        if self._down:
            with self._lock:
                self._down = False
            log.warning("JWT replay cache: shared store reachable again")
        if fresh:
            self.local.seen(iss, jti, expires_at, now)
        self._purge(now)
        return not fresh

    def _fallback(self, error: BaseException | None) -> None:
        if self.metrics is not None:
            self.metrics.replay_fallbacks.inc()
        if error is None:
            return
        from .decisions.store import is_unavailable

        with self._lock:
            self._down = True
        # The exception's type only: its message may carry the SQL parameters (the token id).
        if is_unavailable(error):
            log.warning("JWT replay cache: shared store unreachable (%s); checking replays in this process "
                        "only, retry in %.0fs", type(error).__name__, self.retry_after)
        else:
            log.error("JWT replay cache: shared store failed (%s); checking replays in this process only, "
                      "retry in %.0fs", type(error).__name__, self.retry_after)

    def _purge(self, now: float) -> None:
        """Expired rows are overwritten when their id comes again; the rest are deleted now and then."""
        tick = self.monotonic()
        with self._lock:
            if tick < self._next_purge:
                return
            self._next_purge = tick + self.purge_interval
        try:
            self.store.purge_tokens(_when(now))
        except Exception as exc:  # noqa: BLE001 - the next purge takes what this one left
            log.info("JWT replay cache: purge of expired ids failed (%s)", type(exc).__name__)


def _column(value: str) -> str:
    """Stored as sent when short printable ASCII; else a digest (long ids, NUL, lone surrogates)."""
    if len(value) <= _COLUMN and value.isascii() and value.isprintable():
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _when(seconds: float) -> datetime:
    if not math.isfinite(seconds) or seconds > _LATEST:
        seconds = _LATEST
    return datetime.fromtimestamp(max(seconds, 0.0), timezone.utc)
