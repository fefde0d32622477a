"""Recent decision traces kept in memory, keyed by hookInstance (contract §10.4 Trace).

Durable decision records are a separate store; this bounded buffer lets an
operator or a test look up what the service just decided.
"""
from __future__ import annotations

import threading
from collections import OrderedDict


class TraceBuffer:
    def __init__(self, capacity: int = 1000):
        self.capacity = capacity
        self._items: OrderedDict[str, list[dict]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, event: dict) -> None:
        """Keep the per-order traces of one hook call (a decision event from ``hooks``)."""
        with self._lock:
            for t in event.get("traces", []):
                key = str(t.get("hookInstance"))
                self._items.setdefault(key, []).append(t)
                self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, hook_instance: str) -> list[dict] | None:
        with self._lock:
            return list(self._items.get(hook_instance, [])) or None
