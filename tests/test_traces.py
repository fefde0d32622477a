"""The in-memory buffer of recent decision traces stays bounded whatever clients send."""
from __future__ import annotations

from cds_service.traces import TraceBuffer


def _event(hook_instance: str, *orders: str) -> dict:
    return {"traces": [{"hookInstance": hook_instance, "order": o} for o in orders]}


def test_a_repeated_hook_instance_replaces_its_traces_instead_of_growing():
    buf = TraceBuffer(capacity=3)
    for _ in range(1000):  # a client replaying one body (the benchmark does)
        buf.record(_event("same", "DeviceRequest/a", "ServiceRequest/b"))
    assert [t["order"] for t in buf.get("same")] == ["DeviceRequest/a", "ServiceRequest/b"]
    assert sum(len(v) for v in buf._items.values()) == 2


def test_capacity_counts_calls_oldest_out_first():
    buf = TraceBuffer(capacity=2)
    buf.record(_event("one", "DeviceRequest/1"))
    buf.record(_event("two", "DeviceRequest/2"))
    buf.record(_event("one", "DeviceRequest/1b"))  # renewed: now the newest
    buf.record(_event("three", "DeviceRequest/3"))
    assert buf.get("two") is None
    assert [t["order"] for t in buf.get("one")] == ["DeviceRequest/1b"]
    assert [t["order"] for t in buf.get("three")] == ["DeviceRequest/3"]
