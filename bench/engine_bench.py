"""Benchmark 1: the engine alone, per policy — evaluations per second on realistic facts.

Runs the pure core (``sansio.hook.process``) on every fhir_examples scenario of each policy
and on a 100-Observation full-prefetch request; prints a table.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cds_service.library import load_library  # noqa: E402
from cds_service.sansio.hook import PrefetchSource, Settings, process  # noqa: E402
from workload import full_prefetch_request  # noqa: E402

TODAY = date(2025, 12, 31)


def rate(bodies: list[dict], library, seconds: float = 2.0) -> tuple[float, float]:
    """(evaluations per second, median ms per request) over repeated passes."""
    settings = Settings()
    times = []
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for body in bodies:
            t = time.perf_counter()
            process(body, library, PrefetchSource(body.get("prefetch")), TODAY, settings)
            times.append(time.perf_counter() - t)
            done += len(body["context"]["draftOrders"]["entry"])
    elapsed = time.perf_counter() - start
    return done / elapsed, statistics.median(times) * 1000


def main() -> None:
    library = load_library(REPO / "policies")
    rows = []
    for folder in sorted(p for p in (REPO / "fhir_examples").iterdir() if (p / "index.json").exists()):
        index = json.loads((folder / "index.json").read_text())
        bodies = [json.loads((folder / e["file"]).read_text()) for e in index]
        per_s, median_ms = rate(bodies, library)
        rows.append((folder.name, len(bodies), per_s, median_ms))
    big = full_prefetch_request(100, 30)
    per_s, median_ms = rate([big], library)
    rows.append(("cp-mp-190-2023 full prefetch (100 obs, 30 cond)", 1, per_s, median_ms))
    print(f"Engine alone — {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'workload':52} {'requests':>8} {'evals/s':>10} {'median ms':>10}")
    for name, n, per_s, median_ms in rows:
        print(f"{name:52} {n:>8} {per_s:>10.0f} {median_ms:>10.2f}")


if __name__ == "__main__":
    main()
