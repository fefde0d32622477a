"""Helpers for the decision-record, feedback and metrics tests: apps on a real store, a real
threaded HTTP server on 127.0.0.1, example hook requests with fresh hookInstances."""
from __future__ import annotations

import copy
import json
import threading
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
from werkzeug.serving import make_server

from cds_service import create_app
from conftest import EXAMPLES, FIXED_NOW, load_json
from postgres import shared_server

SUPPORTED = "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"
NOT_NECESSARY = "cp-mp-190-2023/03-adult-sleep-only-portable-e1392.json"
INSUFFICIENT = "cp-mp-190-2023/08-adult-inpatient-test-too-early-e1390.json"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A real, empty store: a SQLite file, or a database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'decisions.sqlite3'}"
    return shared_server().create_database()


def make_app(url: str, tmp_path, clock=lambda: FIXED_NOW, **config):
    return create_app({
        "TESTING": True, "CLOCK": clock, "DATABASE_URL": url, "INSTANCE_DIR": str(tmp_path / "instance"),
        "DECISION_RETRY_MAX_SECONDS": 0.5, **config,
    })


def hook_request(name: str = SUPPORTED, hook_instance: str | None = None) -> dict:
    body = copy.deepcopy(load_json(EXAMPLES / name))
    body["hookInstance"] = hook_instance or str(uuid.uuid4())
    return body


def hid(series: int, i: int) -> str:
    """A hookInstance (a UUID, as the request schema requires) that sorts by series and number."""
    return f"{series:08x}-0000-4000-8000-{i:012d}"


def feedback_entry(card: str, outcome: str = "accepted", code: str | None = None, when: str | None = None) -> dict:
    entry = {"card": card, "outcome": outcome, "outcomeTimestamp": when or "2025-12-31T15:01:00Z"}
    if outcome == "overridden" and code:
        entry["overrideReason"] = {
            "reason": {"system": "http://example.org/fhir/cds-coverage/CodeSystem/coverage-override-reason",
                       "code": code, "display": "x"},
            "userComment": "patient Jane Roe insists",
        }
    return entry


@contextmanager
def live_server(app):
    """The app behind werkzeug's threaded WSGI server on 127.0.0.1 (a real HTTP server)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def get(url: str, timeout: float = 30) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            raw = resp.read()
            ctype = resp.headers.get("Content-Type", "")
            return resp.status, json.loads(raw) if "json" in ctype else raw.decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def clock_at(*args) -> callable:
    when = datetime(*args, tzinfo=timezone.utc)
    return lambda: when
