"""Fuzzing: Schemathesis against the production server, from the service's own OpenAPI description.

Starts ``cds-service serve`` (gunicorn, a subprocess, client authentication off so requests reach
the handlers, its store a SQLite file in a temporary folder), loads ``/openapi.json`` from it and,
for every operation, sends ``--examples`` requests Schemathesis generates from the description
(positive: valid by the schema) and as many negative ones (violating it: wrong types, missing
members, bodies that are not what the operation takes). The hook endpoint is fuzzed once with a
random service id, and once per service with a description made for it (``per_service``): its
hook's context schema in place of the generic ``context: object``, so that valid requests get
past validation into the evaluation. Every answer must be below 500, and every
4xx an OperationOutcome with an issue. Prints the requests tried, per operation and in total,
and exits 1 on any 5xx or any 4xx that is not an OperationOutcome.

    .venv/bin/python bench/fuzz.py                  # 200 + 200 per operation (make fuzz)
    .venv/bin/python bench/fuzz.py --examples 50    # quicker

tests/test_openapi.py runs a bounded version in the test suite (in-process, 25 per operation).
"""
from __future__ import annotations

import argparse
import json
import itertools
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import requests  # noqa: E402
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, Phase, Verbosity, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from cds_service.library import load_library  # noqa: E402
from soak import Service  # noqa: E402


def _is_outcome(resp: requests.Response) -> bool:
    try:
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" and bool(body.get("issue"))


def _inline(schema, defs: dict):
    """A JSON Schema with its local ``#/$defs/...`` references replaced by their definitions."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.split("/")[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k not in ("$defs", "$schema", "$id")}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def per_service(doc: dict, services: list[dict]) -> dict:
    """The served description plus, for each service, its own path whose body is that hook's request:
    ``hook`` fixed and ``context`` the hook's context schema (cds_service/schemas), so that valid
    generated requests pass validation and reach the evaluation instead of all being 400."""
    doc = json.loads(json.dumps(doc))
    template = doc["paths"]["/cds-services/{service_id}"]["post"]
    for svc in services:
        path = REPO / "cds_service" / "schemas" / f"context-{svc['hook']}.schema.json"
        if not path.exists():
            continue
        context = json.loads(path.read_text(encoding="utf-8"))
        op = json.loads(json.dumps(template))
        op["operationId"] = f"call-{svc['id']}"
        op.pop("parameters", None)
        body = op["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["hook"] = {"const": svc["hook"]}
        body["properties"]["context"] = _inline(context, context.get("$defs", {}))
        doc["paths"][f"/cds-services/{svc['id']}"] = {"post": op}
    return doc


def fuzz(base: str, examples: int, seed: int, progress=print) -> dict:
    session = requests.Session()
    session.trust_env = False
    discovered = session.get(base + "/cds-services", timeout=10).json()["services"]
    doc = per_service(session.get(base + "/openapi.json", timeout=10).json(), discovered)
    schema = schemathesis.openapi.from_dict(doc)
    totals = {"requests": 0, "5xx": 0, "4xx without OperationOutcome": 0, "transport errors": 0}
    failures: list[str] = []
    services = [s["id"] for s in discovered]
    prefixes = sorted(p.prefix for p in load_library(REPO / "policies").policies)
    for result in schema.get_all_operations():
        operation = result.ok()
        # Path parameters: random ones (404s), and each real service and Questionnaire, so the
        # generated bodies and queries reach the handlers behind them.
        variants: list[dict] = [{}]
        if operation.path == "/cds-services/{service_id}":
            pass  # the per-service paths fuzz each real service with its own hook's context
        elif "{service_id}" in operation.path:
            variants += [{"service_id": sid} for sid in services]
        if "{prefix}" in operation.path:
            variants += [{"prefix": prefix} for prefix in prefixes[:1]]
        for path_parameters, mode in itertools.product(
                variants, (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)):
            statuses: Counter = Counter()
            started = time.monotonic()

            @given(operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
            @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                      verbosity=Verbosity.quiet)
            def run_case(case):
                totals["requests"] += 1
                try:
                    resp = case.call(base_url=base, session=session, timeout=30)
                except requests.RequestException as exc:
                    totals["transport errors"] += 1
                    statuses["transport error"] += 1
                    failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}: {exc}"[:300])
                    return
                statuses[resp.status_code] += 1
                if resp.status_code >= 500:
                    totals["5xx"] += 1
                    failures.append(f"{operation.label} [{mode.value}]: HTTP {resp.status_code} for "
                                    f"{case.method} {case.path} body={str(getattr(case, 'body', None))[:200]}")
                elif resp.status_code >= 400 and not _is_outcome(resp):
                    totals["4xx without OperationOutcome"] += 1
                    failures.append(f"{operation.label} [{mode.value}]: HTTP {resp.status_code} without an "
                                    f"OperationOutcome: {resp.text[:200]}")

            if seed is not None:
                run_case = hypothesis_seed(seed)(run_case)
            try:
                run_case()
            except Unsatisfiable:  # nothing to break (no parameters, no body): no negative cases
                pass
            label = operation.label + "".join(f" {k}={v}" for k, v in path_parameters.items())
            progress(f"  {label:<62} {mode.value:<8} {sum(statuses.values()):>6} requests "
                     f"in {time.monotonic() - started:5.1f} s  "
                     f"{', '.join(f'{k}: {v}' for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))}")
    totals["failures"] = failures
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200,
                        help="generated requests per operation and mode (positive, negative); default 200")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, kill) ends the run through its finally blocks: the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="cds-fuzz-"))
    service = Service(workdir, "http://127.0.0.1:9/fhir", args.workers, 4, None)
    try:
        service.wait_ready()
        print(f"fuzz: Schemathesis {schemathesis.SCHEMATHESIS_VERSION} against {service.base}/openapi.json "
              f"(gunicorn, {args.workers} workers), {args.examples} positive + {args.examples} negative "
              f"examples per operation", flush=True)
        started = time.monotonic()
        totals = fuzz(service.base, args.examples, args.seed, progress=lambda line: print(line, flush=True))
        elapsed = time.monotonic() - started
    finally:
        status = service.stop()
        log = service.tail(10 ** 7)
        shutil.rmtree(workdir, ignore_errors=True)
    tracebacks = log.count("Traceback")
    print(f"fuzz: {totals['requests']} requests tried in {elapsed:.0f} s: {totals['5xx']} 5xx, "
          f"{totals['4xx without OperationOutcome']} 4xx without an OperationOutcome, "
          f"{totals['transport errors']} transport errors; server exit status {status}, "
          f"{tracebacks} tracebacks in its log")
    for line in totals["failures"][:20]:
        print(f"  {line}")
    ok = not totals["failures"] and status == 0 and tracebacks == 0
    print("fuzz: PASS" if ok else "fuzz: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
