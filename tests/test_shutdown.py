"""Graceful shutdown of the production server (gunicorn): on SIGTERM, in-flight requests complete and
pending decision records are stored — or, when the store cannot take them, spooled and stored at the
next start.

Each test starts ``cds-service serve`` in a subprocess with its decision store a SQLite file, and a
FHIR server (tests/fhir_server.py FaultServer) that holds the Observation searches for a while, so
that hook calls without prefetch are in flight when SIGTERM arrives. Their records are made after
the signal, while the workers shut down: exactly the records a careless shutdown loses.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import EXAMPLES, REPO, load_json
from fhir_server import FaultServer, free_port, request_resources

EXAMPLE = EXAMPLES / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"
SLOW = 2.0  # seconds the FHIR server holds each Observation search
IN_FLIGHT = 6


class Served:
    def __init__(self, workdir: Path, fhir_base: str, **env):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db = workdir / "decisions.sqlite3"
        self.log_path = workdir / f"server-{self.port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PROMETHEUS_"))}
        environ.update({
            "CDS_AUTH_REQUIRED": "false", "CDS_DATABASE_URL": f"sqlite:///{self.db}",
            "CDS_INSTANCE_DIR": str(workdir / "instance"), "CDS_FHIR_ALLOWLIST": json.dumps([fhir_base]),
            "CDS_FHIR_DEADLINE_SECONDS": "8", "CDS_FHIR_REQUEST_TIMEOUT": "5", "PYTHONPATH": str(REPO),
            **env,
        })
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cds_service", "serve", "--port", str(self.port), "--workers", "2", "--threads", "4"],
            cwd=REPO, env=environ, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        until = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the service exited at start-up:\n{self.output()}")
            try:
                if requests.get(self.base + "/cds-services", timeout=1).status_code == 200 and len(self.workers()) == 2:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > until:
                self.kill()
                pytest.fail(f"the service did not start within 60 s:\n{self.output()}")
            time.sleep(0.1)

    def workers(self) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            return []

    def post(self, body: dict) -> requests.Response:
        return requests.post(self.base + "/cds-services/order-sign-crd", data=json.dumps(body),
                             headers={"Content-Type": "application/json"}, timeout=30)

    def output(self) -> str:
        return self.log_path.read_bytes()[-4000:].decode(errors="replace")

    def terminate(self, timeout: float = 40) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def example():
    return load_json(EXAMPLE)


@pytest.fixture
def slow_fhir(example):
    server = FaultServer(resources=request_resources(example), faults={"Observation": "slow"}, slow_seconds=SLOW).start()
    yield server
    server.stop()


@pytest.fixture
def started(tmp_path):
    """Servers a test started: killed at the end whatever happens."""
    servers: list[Served] = []
    yield servers
    for s in servers:
        s.kill()


def without_prefetch(example: dict, base: str) -> dict:
    body = copy.deepcopy(example)
    body.pop("prefetch")
    body["hookInstance"] = str(uuid.uuid4())
    body["fhirServer"] = base
    body["fhirAuthorization"] = {"access_token": "shutdown-token", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "cds-coverage-service"}
    return body


def with_prefetch(example: dict) -> dict:
    body = copy.deepcopy(example)
    body["hookInstance"] = str(uuid.uuid4())
    return body


def observation_searches(server: FaultServer) -> int:
    return sum(1 for s in server.requests_since() if s.resource_type == "Observation")


def sigterm_with_requests_in_flight(served: Served, slow_fhir: FaultServer, example: dict):
    """Fast calls (answered, records queued), then IN_FLIGHT slow ones; SIGTERM while the slow ones wait
    on the FHIR server. Returns (hookInstances, responses of the slow calls, exit status, seconds to exit)."""
    fast = [with_prefetch(example) for _ in range(4)]
    for body in fast:
        assert served.post(body).status_code == 200
    slow = [without_prefetch(example, slow_fhir.base) for _ in range(IN_FLIGHT)]
    answers: dict[str, object] = {}

    def call(body):
        try:
            answers[body["hookInstance"]] = served.post(body)
        except requests.RequestException as exc:  # a dropped connection is a failure of the test
            answers[body["hookInstance"]] = exc

    threads = [threading.Thread(target=call, args=(body,)) for body in slow]
    for t in threads:
        t.start()
    until = time.monotonic() + 10
    while observation_searches(slow_fhir) < IN_FLIGHT:  # every slow call is now waiting on the FHIR server
        assert time.monotonic() < until, "the calls never reached the FHIR server"
        time.sleep(0.02)
    signalled = time.monotonic()
    status = served.terminate()
    exited = time.monotonic() - signalled
    for t in threads:
        t.join(timeout=30)
    return [b["hookInstance"] for b in fast + slow], [answers.get(b["hookInstance"]) for b in slow], status, exited


def assert_completed(responses) -> None:
    for resp in responses:
        assert isinstance(resp, requests.Response), f"an in-flight request was dropped: {resp!r}"
        assert resp.status_code == 200, resp.text
        (card,) = resp.json()["cards"]
        # the data arrived after the signal and was evaluated, not cut short
        assert card["extension"]["cds-coverage.evaluation"]["determination"] == "SUPPORTED", card["detail"]


def recorded(served: Served, hook_instances: list[str], timeout: float = 30) -> dict[str, int]:
    """hookInstance -> calls the (restarted) service's store holds for it, once all are there or at the timeout."""
    until = time.monotonic() + timeout
    while True:
        found = {}
        for hi in hook_instances:
            page = requests.get(served.base + "/api/decisions", params={"hookInstance": hi}, timeout=10).json()
            found[hi] = page["total"]
        if all(found.values()) or time.monotonic() > until:
            return found
        time.sleep(0.3)


def test_sigterm_lets_in_flight_requests_finish_and_stores_their_records(tmp_path, example, slow_fhir, started):
    served = Served(tmp_path, slow_fhir.base)
    started.append(served)
    hook_instances, responses, status, exited = sigterm_with_requests_in_flight(served, slow_fhir, example)
    assert status == 0, served.output()
    assert exited < 20, f"shutdown took {exited:.1f} s"
    assert_completed(responses)
    assert "Worker exiting" in served.output()
    # every record is in the store: read by a new instance on the same database
    again = Served(tmp_path, slow_fhir.base)
    started.append(again)
    found = recorded(again, hook_instances)
    assert found == {hi: 1 for hi in hook_instances}  # one decision (one order) per call, none lost, none doubled
    assert not list((tmp_path / "instance" / "decision-spool").glob("spool-*")), "nothing needed spooling"


def test_records_the_store_cannot_take_at_shutdown_are_spooled_and_stored_at_the_next_start(
        tmp_path, example, slow_fhir, started):
    served = Served(tmp_path, slow_fhir.base, CDS_DECISION_FLUSH_TIMEOUT_SECONDS="1")
    started.append(served)
    # Another process holds the database's write lock: the service's writers wait (records queue up).
    lock = sqlite3.connect(served.db, timeout=5, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        hook_instances, responses, status, exited = sigterm_with_requests_in_flight(served, slow_fhir, example)
        assert status == 0, served.output()
        assert_completed(responses)
        spooled = list((tmp_path / "instance" / "decision-spool").glob("spool-*.jsonl"))
        assert spooled, served.output()
        assert sum(len(p.read_text().splitlines()) for p in spooled) == len(hook_instances)
        assert "written to the spool" in served.output()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    again = Served(tmp_path, slow_fhir.base)
    started.append(again)
    found = recorded(again, hook_instances)
    assert found == {hi: 1 for hi in hook_instances}
    assert not list((tmp_path / "instance" / "decision-spool").glob("spool-*")), "the spool was consumed"
