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
        """Keep the per-order traces of one hook call (a decision event from ``hooks``).

        A hookInstance sent again (a client's retry, a load test replaying one body) replaces what was
        kept for it: the buffer holds the latest call per hookInstance, so it stays bounded by
        ``capacity`` calls whatever clients send (the store keeps every call)."""
        calls: dict[str, list[dict]] = {}
        for t in event.get("traces", []):
            calls.setdefault(str(t.get("hookInstance")), []).append(t)
        with self._lock:
            for key, traces in calls.items():
                self._items[key] = traces
                self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, hook_instance: str) -> list[dict] | None:
        with self._lock:
            return list(self._items.get(hook_instance, [])) or None
