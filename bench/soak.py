"""Soak: a mixed run against the production server with random faults in the FHIR server.

Starts ``cds-service serve`` (gunicorn, a real subprocess, its decision store a SQLite file in a
temporary folder) and a FHIR server on 127.0.0.1 holding every fhir_examples resource, that
answers each request with a random fault — a delay, a delay past the service's deadline, HTTP
500, 503 or 429 (retried by the service), a connection reset, a hang-up, a malformed body — or
normally. For ``--seconds`` it sends a steady mix at ``--rate`` requests per second:

* every example with its full prefetch: the answer must carry the determination its index.json
  documents (nothing is fetched);
* the same requests without prefetch, or with part of it, and ``fhirServer``: the service fetches
  the rest through the faults; the answer must be a 200 with one card per order;
* order-select forms of the examples, a few requests the service must refuse (404, 400: recorded
  too), and GETs of discovery, a Questionnaire, /metrics and /api/stats.

It samples the workers' resident memory (``/proc``), counts error responses (5xx, connection
errors, any status but the expected one) and wrong answers, then — after a graceful shutdown
(SIGTERM) — checks in the store that every hook call it made is recorded, with its status and
one decision per evaluated order. Memory growth is measured from the end of a warm-up (a tenth
of the run, 5-60 s) to the end; for runs of 2 minutes or more a prefill of full-prefetch calls
first fills each worker's bounded trace buffer (its last 1,000 hook calls, ~16 MB), which would
otherwise read as growth. The client reuses a kept-alive connection only while it has been idle
less than 2 s (gunicorn closes idle ones after 5 s: a request sent as it does is reset).

    .venv/bin/python bench/soak.py                 # 10 minutes (make soak)
    .venv/bin/python bench/soak.py --seconds 30    # the version tests/test_soak.py runs

Exit status 0 when the run passes: no error responses, no wrong answers, every decision recorded,
workers' memory growth at most 20 %, no worker restarted.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import requests  # noqa: E402

from fhir_server import FaultServer, example_files, free_port, load_json, request_resources  # noqa: E402

GROWTH_LIMIT = 0.20
# fault -> weight per FHIR request (the rest of the time the server answers normally)
FAULTS = {"delay": 0.08, "past-deadline": 0.01, "500": 0.03, "503": 0.03, "429": 0.02, "reset": 0.02,
          "hang-up": 0.01, "malformed": 0.01}


# -- the FHIR server ------------------------------------------------------------------------------
class ChaosFhirServer(FaultServer):
    """FaultServer with one random fault per request (weights ``FAULTS``, scaled by ``fault_scale``)."""

    def __init__(self, resources: list[dict], fault_scale: float = 1.0, past_deadline: float = 4.0, seed: int = 1):
        super().__init__(resources=resources)
        self.fault_scale = fault_scale
        self.past_deadline = past_deadline
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.injected: Counter = Counter()

    def _pick(self) -> str:
        with self.rng_lock:
            x = self.rng.random()
        for fault, weight in FAULTS.items():
            x -= weight * self.fault_scale
            if x < 0:
                return fault
        return "ok"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        fault = self._pick()
        self.injected[fault] += 1
        if fault == "delay":
            time.sleep(random.uniform(0.05, 0.6))
        elif fault == "past-deadline":
            time.sleep(self.past_deadline)
        elif fault in ("500", "503", "429"):
            with self._lock:
                self.seen.append(None)
            body = json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "transient", "diagnostics": "injected"}]}).encode()
            return self._send(h, int(fault), body, extra={"Retry-After": "0"} if fault != "500" else None)
        elif fault == "reset":
            with self._lock:
                self.seen.append(None)
            h.close_connection = True
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return
        elif fault == "hang-up":
            with self._lock:
                self.seen.append(None)
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        elif fault == "malformed":
            with self._lock:
                self.seen.append(None)
            return self._send(h, 200, b'{"resourceType": "Bundle", "entry": [{"resource": ')
        super()._handle(h)


def example_resources() -> list[dict]:
    out: dict[tuple[str, str], dict] = {}
    for path in example_files():
        for res in request_resources(load_json(path)):
            if isinstance(res.get("id"), str):
                out.setdefault((res["resourceType"], res["id"]), res)
    return list(out.values())


# -- the requests -------------------------------------------------------------------------------
@dataclass
class Call:
    kind: str
    method: str
    path: str
    body: dict | None = None
    raw: bytes | None = None
    expect_status: int = 200
    expect_determination: str | None = None
    expect_order: str | None = None  # the card the determination is about (several orders)
    orders: int | None = None  # decisions the store must hold for this call


def _orders_of(body: dict) -> int:
    entries = ((body.get("context") or {}).get("draftOrders") or {}).get("entry") or []
    return len([e for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)])


class Mix:
    """Builds the next request of the mix (fresh hookInstance each time)."""

    WEIGHTS = {"prefetch": 0.35, "no-prefetch": 0.25, "partial-prefetch": 0.15, "order-select": 0.08,
               "refused": 0.03, "get": 0.14}

    def __init__(self, fhir_base: str, seed: int = 7):
        self.fhir_base = fhir_base
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.examples = []
        for index in sorted((REPO / "fhir_examples").glob("*/index.json")):
            for entry in load_json(index):
                body = load_json(index.parent / entry["file"])
                self.examples.append((entry, body))
        from cds_service.library import load_library

        self.prefixes = sorted(p.prefix for p in load_library(REPO / "policies").policies)

    def next(self, kind: str | None = None) -> Call:
        with self.lock:
            kind = kind or self.rng.choices(list(self.WEIGHTS), weights=list(self.WEIGHTS.values()))[0]
            entry, example = self.rng.choice(self.examples)
            pick = self.rng.random()
        body = copy.deepcopy(example)
        body["hookInstance"] = str(uuid.uuid4())
        service = {"order-select": "order-select-crd"}.get(body.get("hook"), "order-sign-crd")
        if kind == "prefetch":
            return Call(kind, "POST", f"/cds-services/{service}", body,
                        expect_determination=entry["expected"]["determination"], expect_order=entry.get("order"),
                        orders=_orders_of(body))
        if kind in ("no-prefetch", "partial-prefetch"):
            prefetch = body.pop("prefetch", {}) or {}
            if kind == "partial-prefetch":
                body["prefetch"] = {k: v for k, v in prefetch.items() if k in ("patient", "coverage", "conditions")}
            body["fhirServer"] = self.fhir_base
            body["fhirAuthorization"] = {"access_token": "soak-token", "token_type": "Bearer", "expires_in": 300,
                                         "scope": "patient/*.read", "subject": "cds-coverage-service"}
            return Call(kind, "POST", f"/cds-services/{service}", body, orders=_orders_of(body))
        if kind == "order-select":
            body["hook"] = "order-select"
            refs = [f"{e['resource']['resourceType']}/{e['resource']['id']}"
                    for e in body["context"]["draftOrders"]["entry"]]
            body["context"]["selections"] = refs[:1]
            return Call(kind, "POST", "/cds-services/order-select-crd", body, orders=1)
        if kind == "refused":
            if pick < 0.5:
                return Call(kind, "POST", "/cds-services/no-such-service", body, expect_status=404, orders=0)
            body["context"].pop("patientId", None)
            return Call(kind, "POST", f"/cds-services/{service}", body, expect_status=400, orders=0)
        paths = ["/cds-services", "/metrics", "/api/stats", "/openapi.json"] + [
            f"/fhir/Questionnaire/{prefix}" for prefix in self.prefixes]
        return Call(kind, "GET", paths[int(pick * len(paths))])


# -- the server under test ------------------------------------------------------------------------
class Service:
    """``python -m cds_service serve`` in a subprocess; its workers found through /proc."""

    def __init__(self, workdir: Path, fhir_base: str, workers: int | None, threads: int | None, deadline: float | None):
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db = workdir / "decisions.sqlite3"
        self.log_path = workdir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PROMETHEUS_"))}
        env.update({
            "CDS_AUTH_REQUIRED": "false",
            "CDS_DATABASE_URL": f"sqlite:///{self.db}",
            "CDS_INSTANCE_DIR": str(workdir / "instance"),
            "CDS_FHIR_ALLOWLIST": json.dumps([fhir_base]),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
            "PYTHONPATH": str(REPO),
        })
        if deadline:
            env["CDS_FHIR_DEADLINE_SECONDS"] = str(deadline)
        (workdir / "metrics").mkdir()
        cmd = [sys.executable, "-m", "cds_service", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if workers:
            cmd += ["--workers", str(workers)]
        if threads:
            cmd += ["--threads", str(threads)]
        if not workers:
            from cds_service.server import default_workers

            workers = default_workers()
        self.expected_workers = workers
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60.0) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited at start-up:\n{self.tail()}")
            try:
                if requests.get(self.base + "/cds-services", timeout=2).status_code == 200 and \
                        len(self.workers()) >= self.expected_workers:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service did not start within {timeout:.0f} s:\n{self.tail()}")

    def workers(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    @staticmethod
    def rss_kb(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def rss(self) -> dict[int, int]:
        return {pid: self.rss_kb(pid) for pid in self.workers()}

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish, queued records are stored); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


# -- the run --------------------------------------------------------------------------------------
@dataclass
class Result:
    seconds: float = 0.0
    rate: float = 0.0
    sent: Counter = field(default_factory=Counter)  # by kind
    statuses: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)  # (kind, what)
    wrong: list = field(default_factory=list)
    latencies: dict = field(default_factory=dict)  # kind -> [seconds]
    hook_calls: dict = field(default_factory=dict)  # hookInstance -> (status, orders)
    rss_boot: dict = field(default_factory=dict)
    rss_warm: dict = field(default_factory=dict)
    rss_end: dict = field(default_factory=dict)
    rss_samples: list = field(default_factory=list)  # (t, total kB)
    workers_start: list = field(default_factory=list)
    workers_end: list = field(default_factory=list)
    recorded: int = 0
    prefill_seconds: float = 0.0
    rss_prefilled: dict = field(default_factory=dict)
    unknown_service: int = 0  # calls to a service that does not exist (404)
    unknown_service_recorded: int = 0
    missing: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    stats_total: int | None = None
    exit_status: int | None = None
    fhir_requests: int = 0
    faults: Counter = field(default_factory=Counter)
    technical: int = 0
    server_log_errors: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def growth(self) -> float:
        warm, end = sum(self.rss_warm.values()), sum(self.rss_end.values())
        return (end - warm) / warm if warm else 0.0

    @property
    def restarted(self) -> bool:
        return sorted(self.workers_start) != sorted(self.workers_end)

    @property
    def passed(self) -> bool:
        return (not self.errors and not self.wrong and not self.missing and not self.mismatched
                and self.unknown_service_recorded == self.unknown_service
                and self.growth <= GROWTH_LIMIT and not self.restarted and self.exit_status == 0 and self.total > 0)

    def p(self, kind: str | None, q: float) -> float:
        values = sorted(v for k, vs in self.latencies.items() if k == kind or (kind is None and k != "prefill")
                        for v in vs)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q * len(values)))]

    def table(self) -> str:
        mb = lambda kb: f"{kb / 1024:.1f} MB"  # noqa: E731
        rows = [
            ("duration", f"{self.seconds:.0f} s at {self.rate:g} requests/s (achieved "
                         f"{(self.total - self.sent['prefill']) / self.seconds:.1f}/s)" if self.seconds else "-"),
            ("prefill", f"{self.sent['prefill']} full-prefetch calls in {self.prefill_seconds:.0f} s before the run "
                        "(fills each worker's bounded trace buffer before memory is measured)"
             if self.sent["prefill"] else "none"),
            ("requests", f"{self.total} ({', '.join(f'{k} {v}' for k, v in sorted(self.sent.items()))})"),
            ("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items(), key=str))),
            ("error responses", f"{len(self.errors)} (5xx, connection errors, unexpected statuses)"),
            ("wrong answers", f"{len(self.wrong)} (full-prefetch determination differs from index.json, or cards missing)"),
            ("latency p50 / p95 / p99", f"{self.p(None, .5) * 1000:.0f} / {self.p(None, .95) * 1000:.0f} / "
                                        f"{self.p(None, .99) * 1000:.0f} ms (prefetch p95 {self.p('prefetch', .95) * 1000:.0f} ms, "
                                        f"no-prefetch p95 {self.p('no-prefetch', .95) * 1000:.0f} ms)"),
            ("FHIR server", f"{self.fhir_requests} requests, faults injected: "
                            f"{', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()) if k != 'ok')}"),
            ("technical-failure cards", f"{self.technical} (orders whose data the faults kept from the service)"),
            ("workers", f"{len(self.workers_start)} (pids {'changed: a worker restarted' if self.restarted else 'unchanged'})"),
            ("workers' RSS boot / warm / end", f"{mb(sum(self.rss_boot.values()))} / {mb(sum(self.rss_warm.values()))} / "
                                               f"{mb(sum(self.rss_end.values()))}" +
             (f" (after the prefill {mb(sum(self.rss_prefilled.values()))})" if self.rss_prefilled else "")),
            ("RSS during the run", ", ".join(f"{t} s {kb / 1024:.0f}" for t, kb in self.rss_samples[::max(1, len(self.rss_samples) // 6)])
             + " MB" if self.rss_samples else "-"),
            ("memory growth (warm → end)", f"{self.growth * 100:+.1f} % (limit +{GROWTH_LIMIT * 100:.0f} %)"),
            ("hook calls recorded", f"{self.recorded} of {len(self.hook_calls)} (+ {self.unknown_service_recorded} of "
                                    f"{self.unknown_service} to an unknown service); missing {len(self.missing)}, "
                                    f"wrong status or decision count {len(self.mismatched)}"),
            ("graceful shutdown", f"exit status {self.exit_status}"),
            ("result", "PASS" if self.passed else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def markdown(self) -> str:
        lines = ["| measure | value |", "|---|---|"]
        for row in self.table().splitlines():
            key, _, value = row.partition("  ")
            lines.append(f"| {key.strip()} | {value.strip()} |")
        return "\n".join(lines)


def _evaluation(card: dict) -> dict:
    return (card.get("extension") or {}).get("cds-coverage.evaluation") or {}


def _check(call: Call, resp: requests.Response, result: Result, lock: threading.Lock) -> None:
    problem = None
    wrong = None
    if resp.status_code >= 500 or resp.status_code != call.expect_status:
        problem = f"HTTP {resp.status_code} (expected {call.expect_status}): {resp.text[:200]}"
    elif call.method == "POST":
        try:
            payload = resp.json()
        except ValueError:
            payload = None
            problem = "answer is not JSON"
        if payload is not None and call.expect_status == 200:
            cards = payload.get("cards") or []
            technical = sum(1 for c in cards if _evaluation(c).get("determination") == "TECHNICAL_FAILURE")
            with lock:
                result.technical += technical
            if call.kind != "order-select" and call.orders and len(cards) != call.orders:
                wrong = f"{len(cards)} cards for {call.orders} orders"
            if any(not (c.get("summary") and c.get("detail")) for c in cards):
                wrong = "a card without summary or detail"
            if call.expect_determination:
                mine = [c for c in cards if not call.expect_order or
                        c["extension"].get("davinci-crd.associated-resource", [{}])[0].get("reference") == call.expect_order]
                got = _evaluation(mine[0]).get("determination") if mine else None
                if got != call.expect_determination:
                    wrong = f"determination {got}, index.json says {call.expect_determination}"
        elif payload is not None and payload.get("resourceType") != "OperationOutcome":
            problem = f"HTTP {resp.status_code} without an OperationOutcome"
    with lock:
        if problem:
            result.errors.append((call.kind, call.path, problem))
        if wrong:
            result.wrong.append((call.kind, call.body.get("hookInstance") if call.body else None, wrong))


TRACE_BUFFER = 1000  # hook calls each worker keeps in memory (DecisionRecorder recent=1000)
IDLE_REUSE = 2.0  # seconds a client keeps an idle connection: below gunicorn's keepalive (5 s)


def run(seconds: float = 600.0, rate: float = 10.0, workers: int | None = None, threads: int | None = None,
        concurrency: int = 32, fault_scale: float = 1.0, deadline: float | None = None, seed: int = 7,
        progress=print, keep: bool = False, prefill: int | None = None) -> Result:
    """The soak; returns its Result (``progress`` gets a line every 30 s).

    ``prefill`` full-prefetch calls are sent as fast as the server takes them before the timed run,
    so that the bounded in-memory buffers (each worker's last TRACE_BUFFER traces, ~16 MB) are full
    before memory is measured; None: enough for every worker (1.3 x TRACE_BUFFER x workers) when the
    run lasts 2 minutes or more, else none.
    """
    workdir = Path(tempfile.mkdtemp(prefix="cds-soak-"))
    fhir = ChaosFhirServer(example_resources(), fault_scale=fault_scale,
                           past_deadline=(deadline or 3.0) + 1.0, seed=seed).start()
    service = Service(workdir, fhir.base, workers, threads, deadline)
    result = Result(seconds=seconds, rate=rate)
    lock = threading.Lock()
    local = threading.local()
    try:
        service.wait_ready()
        result.workers_start = service.workers()
        time.sleep(1.0)
        result.rss_boot = service.rss()
        mix = Mix(fhir.base, seed=seed)

        def send(call: Call) -> None:
            # A kept-alive connection idle for as long as the server's keepalive may be closed by the
            # server just as a request goes out on it (the request is lost in the reset): clients
            # reuse a connection only while it is younger than that.
            session, last = getattr(local, "session", None), getattr(local, "last", 0.0)
            if session is not None and time.monotonic() - last > IDLE_REUSE:
                session.close()
                session = None
            if session is None:
                session = local.session = requests.Session()
                session.trust_env = False
            started = time.perf_counter()
            try:
                if call.method == "GET":
                    resp = session.get(service.base + call.path, timeout=30)
                else:
                    resp = session.post(service.base + call.path, data=json.dumps(call.body),
                                        headers={"Content-Type": "application/json"}, timeout=30)
            except requests.RequestException as exc:
                with lock:
                    result.errors.append((call.kind, call.path, f"{type(exc).__name__}: {exc}"[:200]))
                    result.statuses["connection error"] += 1
                return
            elapsed = time.perf_counter() - started
            local.last = time.monotonic()
            with lock:
                result.statuses[resp.status_code] += 1
                result.latencies.setdefault(call.kind, []).append(elapsed)
            _check(call, resp, result, lock)

        if prefill is None:
            prefill = int(1.3 * TRACE_BUFFER * len(result.workers_start)) if seconds >= 120 else 0
        if prefill:
            progress(f"  prefill: {prefill} full-prefetch calls to fill the workers' trace buffers")
            t = time.monotonic()
            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="prefill") as filler:
                for _ in range(prefill):
                    call = mix.next("prefetch")
                    call.kind = "prefill"
                    with lock:
                        result.sent["prefill"] += 1
                        result.hook_calls[call.body["hookInstance"]] = (call.expect_status, call.orders)
                    filler.submit(send, call)
            result.prefill_seconds = time.monotonic() - t
            result.rss_prefilled = service.rss()
        warm_at = min(60.0, max(5.0, seconds * 0.1))
        started = time.monotonic()
        next_progress = 30.0
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="soak")
        n = 0
        try:
            while True:
                now = time.monotonic() - started
                if now >= seconds:
                    break
                if not result.rss_warm and now >= warm_at:
                    result.rss_warm = service.rss()
                if now >= next_progress:
                    total = sum(service.rss().values())
                    result.rss_samples.append((round(now), total))
                    progress(f"  {now:5.0f} s: {result.total} requests, {len(result.errors)} errors, "
                             f"{len(result.wrong)} wrong, workers' RSS {total / 1024:.1f} MB")
                    next_progress += 30.0
                target = started + n / rate
                if target > time.monotonic():
                    time.sleep(min(target - time.monotonic(), 0.05))
                    continue
                call = mix.next()
                with lock:
                    result.sent[call.kind] += 1
                    if call.expect_status == 404:
                        result.unknown_service += 1  # recorded without a hookInstance: counted by status
                    elif call.method == "POST" and call.body is not None:
                        result.hook_calls[call.body["hookInstance"]] = (call.expect_status, call.orders)
                pool.submit(send, call)
                n += 1
        finally:
            pool.shutdown(wait=True)
        result.seconds = time.monotonic() - started
        result.rss_end = service.rss()
        if not result.rss_warm:
            result.rss_warm = result.rss_boot
        result.workers_end = service.workers()
        # The records are stored off the request path: wait for the store to hold them all.
        until = time.monotonic() + 60
        while time.monotonic() < until:
            try:
                stats = requests.get(service.base + "/api/stats", timeout=10).json()
                result.stats_total = stats["calls"]["total"]
                if result.stats_total >= len(result.hook_calls) + result.unknown_service:
                    break
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.5)
    finally:
        result.exit_status = service.stop()
        result.fhir_requests = len(fhir.requests_since())
        result.faults = Counter(fhir.injected)
        fhir.stop()
    _verify_store(service.db, result)
    log = service.tail(10 ** 7)
    result.server_log_errors = [line[:300] for line in log.splitlines()
                                if '"level": "ERROR"' in line or "Traceback" in line or "[CRITICAL]" in line][:20]
    if keep:
        progress(f"  kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _verify_store(db: Path, result: Result) -> None:
    """Every hook call sent is in the store once, with its status and one decision per evaluated order."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        calls = {}
        for hi, status, orders in conn.execute("SELECT hook_instance, status, orders FROM hook_calls"):
            calls.setdefault(hi, []).append((status, orders))
        decisions = dict(conn.execute("SELECT hook_instance, count(*) FROM decisions GROUP BY hook_instance"))
        result.unknown_service_recorded = conn.execute("SELECT count(*) FROM hook_calls WHERE status = 404").fetchone()[0]
    for hi, (status, orders) in result.hook_calls.items():
        rows = calls.get(hi)
        if not rows:
            result.missing.append(hi)
            continue
        result.recorded += 1
        if len(rows) != 1 or rows[0][0] != status:
            result.mismatched.append((hi, f"stored {rows}, expected status {status}"))
        elif status == 200 and orders and decisions.get(hi, 0) < 1:
            result.mismatched.append((hi, "no decision rows"))
        elif status == 200 and orders and decisions.get(hi, 0) != rows[0][1]:
            result.mismatched.append((hi, f"{decisions.get(hi)} decision rows for {rows[0][1]} orders"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the run (default 600)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second (default 10)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the service's, 2 per core)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: the service's)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most (default 32)")
    parser.add_argument("--fault-scale", type=float, default=1.0,
                        help="multiplies the fault weights (default 1: about 1 FHIR request in 5 fails or stalls)")
    parser.add_argument("--deadline", type=float, help="the service's FHIR_DEADLINE_SECONDS (default: its own, 3)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--prefill", type=int, help="full-prefetch calls before the run (default: enough to fill "
                                                      "every worker's trace buffer when --seconds >= 120, else 0)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown (bench/RESULTS.md)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log, store)")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, kill) ends the run through its finally blocks: the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"soak: {args.seconds:.0f} s at {args.rate:g} requests/s against `cds-service serve`, "
          f"FHIR server faults x{args.fault_scale:g}", flush=True)
    result = run(args.seconds, args.rate, args.workers, args.threads, args.concurrency, args.fault_scale,
                 args.deadline, args.seed, progress=lambda line: print(line, flush=True), keep=args.keep,
                 prefill=args.prefill)
    print(result.table())
    for kind, path, problem in result.errors[:10]:
        print(f"error: {kind} {path}: {problem}")
    for kind, hi, problem in result.wrong[:10]:
        print(f"wrong: {kind} {hi}: {problem}")
    for hi in result.missing[:10]:
        print(f"not recorded: {hi}")
    for hi, problem in result.mismatched[:10]:
        print(f"recorded wrongly: {hi}: {problem}")
    for line in result.server_log_errors[:10]:
        print(f"server log: {line}")
    if args.markdown:
        print()
        print(result.markdown())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
