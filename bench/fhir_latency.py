"""Benchmark: the no-prefetch path against a real FHIR server with 50 ms added per FHIR request.

Starts sekmet-fhir on 127.0.0.1 (as the tests do, tests/fhir_server.py) behind a proxy that
holds every request 50 ms, loads the examples, and times hook calls that carry no prefetch, so
the service fetches everything itself: its key queries run concurrently, and each reference is
read as soon as the data naming it arrives. The total should be close to the round trips on
the critical path (a query, then a read of what it references) plus evaluation, not the sum of
the requests.

    .venv/bin/python bench/fhir_latency.py [--latency 0.05] [--runs 5]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("CDS_AUTH_REQUIRED", "false")

from fhir_server import load_json, load_test_data, start_sekmet, stop_sekmet  # noqa: E402

EXAMPLES = [
    "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json",
    "cp-mp-190-2023/02-adult-overnight-oximetry-e1390.json",
    "cp-mp-190-2023/18-adult-reauth-new-test-e1390.json",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to each FHIR request")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per example and mode")
    args = parser.parse_args()

    from cds_service import create_app

    workdir = Path(tempfile.mkdtemp(prefix="fhir-bench-"))
    server = start_sekmet(workdir)
    try:
        load_test_data(server)
        app = create_app({"TESTING": True, "FHIR_ALLOWLIST": [server.base]})
        client = app.test_client()
        server.proxy.delay = args.latency
        import requests

        session = requests.Session()
        rtts = []
        for _ in range(args.runs + 1):
            t = time.perf_counter()
            session.get(f"{server.base}/Coverage?patient=pt-cp190-01&status=active", timeout=10).raise_for_status()
            rtts.append(time.perf_counter() - t)
        rtt = statistics.median(rtts[1:])
        print(f"FHIR server: sekmet-fhir on 127.0.0.1, +{args.latency * 1000:.0f} ms per request (proxy); "
              f"one round trip (a Coverage search): {rtt * 1000:.1f} ms")
        print(f"{'example':<54} {'prefetch':>9} {'no prefetch':>12} {'requests':>9} {'sequential':>11} {'round trips':>12}")
        for name in EXAMPLES:
            example = load_json(REPO / "fhir_examples" / name)
            server.checkout(example)
            full, none, counts = [], [], []
            for i in range(args.runs + 1):  # the first call of each mode warms up
                body = copy.deepcopy(example)
                body["hookInstance"] = str(uuid.uuid4())
                body["fhirServer"] = server.base
                t = time.perf_counter()
                assert client.post("/cds-services/order-sign-crd", json=body).status_code == 200
                if i:
                    full.append(time.perf_counter() - t)
                body = copy.deepcopy(example)
                body.pop("prefetch")
                body["hookInstance"] = str(uuid.uuid4())
                body["fhirServer"] = server.base
                mark = server.proxy.mark()
                t = time.perf_counter()
                resp = client.post("/cds-services/order-sign-crd", json=body)
                elapsed = time.perf_counter() - t
                assert resp.status_code == 200, resp.get_json()
                if i:
                    none.append(elapsed)
                    counts.append(len(server.proxy.since(mark)))
            med_full, med_none, n = statistics.median(full), statistics.median(none), statistics.median(counts)
            print(f"{name:<54} {med_full * 1000:>7.1f}ms {med_none * 1000:>10.1f}ms {n:>9.0f} "
                  f"{n * rtt * 1000:>9.0f}ms {(med_none - med_full) / rtt:>12.2f}")
        print("prefetch: the example's full prefetch, no request sent (evaluation alone);")
        print("no prefetch: the service queries and reads everything itself (medians of the timed calls);")
        print("sequential: requests x one round trip, what one-after-another requests would cost;")
        print("round trips: (no prefetch - prefetch) / one round trip.")
    finally:
        stop_sekmet(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
