"""Benchmark 1: the engine alone, per policy — evaluations per second on realistic facts.

Runs the pure core (``sansio.hook.process``) on every fhir_examples scenario of each policy
and on 100- and 5,000-Observation full-prefetch requests; prints a table, then the time of each
stage of the hook endpoint's work (parse, validate, plan, evaluate, respond) on fresh bodies.
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

from cds_service.config import DEFAULTS  # noqa: E402
from cds_service.library import load_library  # noqa: E402
from cds_service.sansio.hook import PrefetchSource, Settings, process  # noqa: E402
from cds_service.server import tune_gc  # noqa: E402
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
    tune_gc(DEFAULTS["GC_THRESHOLDS"])  # as `cds-service serve` runs its workers
    rows = []
    for folder in sorted(p for p in (REPO / "fhir_examples").iterdir() if (p / "index.json").exists()):
        index = json.loads((folder / "index.json").read_text())
        bodies = [json.loads((folder / e["file"]).read_text()) for e in index]
        per_s, median_ms = rate(bodies, library)
        rows.append((folder.name, len(bodies), per_s, median_ms))
    for n in (100, 5000):
        per_s, median_ms = rate([full_prefetch_request(n, 30)], library, seconds=2.0 if n < 5000 else 4.0)
        rows.append((f"cp-mp-190-2023 full prefetch ({n} obs, 30 cond)", 1, per_s, median_ms))
    print(f"Engine alone — {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'workload':52} {'requests':>8} {'evals/s':>10} {'median ms':>10}")
    for name, n, per_s, median_ms in rows:
        print(f"{name:52} {n:>8} {per_s:>10.0f} {median_ms:>10.2f}")
    print()
    print("Where one order-sign request's time goes (in process, no HTTP; a fresh body parsed each time)")
    print(f"{'stage':30} {'100 obs ms':>12} {'5000 obs ms':>12}")
    small, large = stages(library, 100, 60), stages(library, 5000, 8)
    for name in small:
        print(f"{name:30} {small[name]:>12.2f} {large[name]:>12.2f}")


def stages(library, n_observations: int, repeats: int) -> dict[str, float]:
    """Median ms of each stage of the hook endpoint's work, as hooks.call_service runs them."""
    from cds_service.gather import plan
    from cds_service.hardening import too_deep
    from cds_service.hooks import parse_body, response_bytes
    from cds_service.validation import request_problem

    raw = json.dumps(full_prefetch_request(n_observations, 30)).encode()
    settings = Settings()
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append((time.perf_counter() - start) * 1000)
        return out

    for _ in range(repeats):
        timed("nesting check", lambda: too_deep(raw, 64))
        body = timed("parse (orjson)", lambda: parse_body(raw))
        timed("validate (JSON Schema)", lambda: request_problem(body, "order-sign"))
        source = PrefetchSource(body["prefetch"])
        timed("plan FHIR data", lambda: plan(body, library, TODAY, source))
        result = timed("evaluate (sansio.process)", lambda: process(body, library, source, TODAY, settings))
        timed("response (orjson)", lambda: response_bytes(result.body))
    out = {name: statistics.median(v) for name, v in times.items()}
    out["total"] = sum(out.values())
    return out


if __name__ == "__main__":
    main()
