"""Decision records on a real store (a SQLite file and a PostgreSQL server): what is recorded,
migrations, concurrency, restart and outage durability."""
from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from cds_service import create_app
from cds_service.decisions.models import decisions, feedback, hook_calls, metadata
from cds_service.decisions.store import HEAD, MIGRATIONS, DecisionStore
from conftest import REPO
from decisions_support import (
    INSUFFICIENT, NOT_NECESSARY, SUPPORTED, database_url, feedback_entry, get, hid, hook_request, live_server,
    make_app, post,
)
from postgres import pg_server, pg_url, wait_for  # noqa: F401  (fixtures)

HOOK = "/cds-services/order-sign-crd"
FEEDBACK = "/cds-services/order-sign-crd/feedback"
_ = database_url  # fixture


def dump(store: DecisionStore) -> str:
    """Every stored value, as text (to prove what is not there)."""
    with store.engine.connect() as conn:
        return json.dumps([[list(map(str, row)) for row in conn.execute(sa.select(t))] for t in (hook_calls, decisions, feedback)])


# -- schema ---------------------------------------------------------------------------------------

def test_migrations_build_exactly_the_models(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.config import Config

    store = DecisionStore(database_url)
    assert store.revision() is None
    store.migrate()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert store.revision() == HEAD == ScriptDirectory.from_config(cfg).get_current_head()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    store.migrate()  # idempotent at head
    assert store.counts() == {"hook_calls": 0, "decisions": 0, "feedback": 0}


def test_default_store_is_a_sqlite_file_in_the_instance_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = create_app({"INSTANCE_DIR": str(tmp_path), "DATABASE_URL": None})
    store = app.extensions["cds_decisions"].store
    assert store.dialect == "sqlite" and (tmp_path / "decisions.sqlite3").exists()
    assert store.revision() == HEAD
    assert create_app({"TESTING": True}).extensions["cds_decisions"].store.url == "sqlite://"


def test_postgres_url_forms_use_psycopg():
    from cds_service.decisions.store import normalize_url

    assert normalize_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalize_url("postgresql://u@h:5433/db") == "postgresql+psycopg://u@h:5433/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


# -- what a record holds --------------------------------------------------------------------------

def test_hook_call_is_recorded_with_policy_revision_trace_card_and_assertion(database_url, tmp_path):
    app = make_app(database_url, tmp_path)
    body = hook_request(SUPPORTED)
    resp = app.test_client().post(HOOK, json=body)
    assert resp.status_code == 200
    recorder = app.extensions["cds_decisions"]
    assert recorder.flush(30)
    store = recorder.store
    assert store.counts() == {"hook_calls": 1, "decisions": 1, "feedback": 0}
    with store.engine.connect() as conn:
        call = conn.execute(sa.select(hook_calls)).mappings().one()
        row = conn.execute(sa.select(decisions)).mappings().one()
    assert call["hook_instance"] == body["hookInstance"] and call["service"] == "order-sign-crd"
    assert call["hook"] == "order-sign" and call["status"] == 200 and call["orders"] == 1
    assert call["elapsed_ms"] > 0 and call["received_at"].year == 2025
    card = resp.get_json()["cards"][0]
    assert row["card_uuid"] == card["uuid"]
    assert row["code"] == "E1390" and row["codes"] == ["E1390"] and row["payer"] == "centene"
    assert row["policy"] == "CP.MP.190" and row["revision"] == "CP.MP.190-2023"
    assert row["determination"] == "SUPPORTED" and row["order_ref"].startswith("DeviceRequest/")
    assert row["coverage_assertion_id"]
    ids = {n["id"]: n for n in row["criteria"]}
    assert ids["CP.MP.190-2023/I.B.1.a"]["value"] == "TRUE"
    assert all("/" in ref for n in row["criteria"] for ref in n["evidence"])
    assert any(n["evidence"] for n in row["criteria"])
    assert row["deciding"] == card["extension"]["cds-coverage.evaluation"]["deciding"]
    # No free-text patient data anywhere in the store.
    patient = body["prefetch"]["patient"]
    text = dump(store)
    for value in [patient["name"][0]["family"], *patient["name"][0].get("given", []), patient.get("birthDate")]:
        assert value and value not in text


def test_refused_call_is_recorded_without_decisions(database_url, tmp_path):
    app = make_app(database_url, tmp_path)
    body = hook_request(SUPPORTED)
    body["prefetch"]["coverage"]["entry"][0]["resource"]["payor"][0]["identifier"]["value"] = "nobody"
    resp = app.test_client().post(HOOK, json=body)
    assert resp.status_code == 400
    recorder = app.extensions["cds_decisions"]
    assert recorder.flush(30)
    with recorder.store.engine.connect() as conn:
        call = conn.execute(sa.select(hook_calls)).mappings().one()
    assert call["status"] == 400 and call["orders"] == 0
    assert recorder.store.counts()["decisions"] == 0


def test_fhir_counts_client_and_tenant_are_recorded_when_the_event_has_them(database_url, tmp_path):
    app = make_app(database_url, tmp_path)
    recorder = app.extensions["cds_decisions"]
    trace = {"hookInstance": "h-fhir", "order": "DeviceRequest/dr-1", "code": "E1390", "payer": "centene",
             "revision": "CP.MP.190-2023", "determination": "TECHNICAL_FAILURE", "nodes": [],
             "fhirQueries": 3, "fhirErrors": ["Observation?patient=p1 timed out"], "cardUuid": str(uuid.uuid4())}
    recorder.record({"hookInstance": "h-fhir", "service": "order-sign-crd", "hook": "order-sign",
                     "receivedAt": "2025-12-31T15:00:00+00:00", "status": 200, "elapsedMs": 812.5,
                     "client": "https://ehr.example.org", "tenant": "t-1", "fhirQueries": 3, "fhirErrors": 1,
                     "fhirMs": 640.0, "traces": [trace]})
    assert recorder.flush(30)
    with recorder.store.engine.connect() as conn:
        call = conn.execute(sa.select(hook_calls)).mappings().one()
        row = conn.execute(sa.select(decisions)).mappings().one()
    assert (call["client"], call["tenant"], call["fhir_queries"], call["fhir_errors"], call["fhir_ms"]) == (
        "https://ehr.example.org", "t-1", 3, 1, 640.0)
    assert (row["fhir_queries"], row["fhir_errors"], row["policy"]) == (3, 1, "CP.MP.190")
    assert "timed out" not in dump(recorder.store)  # error texts are counted, not stored


def test_get_reads_the_store_after_a_restart(database_url, tmp_path):
    app = make_app(database_url, tmp_path)
    body = hook_request(NOT_NECESSARY)
    payload = app.test_client().post(HOOK, json=body).get_json()
    app.extensions["cds_decisions"].close()
    restarted = make_app(database_url, tmp_path)
    (trace,) = restarted.extensions["cds_decisions"].get(body["hookInstance"])
    assert trace["determination"] == "NOT_MEDICALLY_NECESSARY" and trace["cardUuid"] == payload["cards"][0]["uuid"]
    assert trace["nodes"] and trace["revision"] == "CP.MP.190-2023"


# -- concurrency ----------------------------------------------------------------------------------

def test_200_parallel_hook_calls_and_200_feedback_posts_are_all_stored_and_linked(database_url, tmp_path, capsys):
    app = make_app(database_url, tmp_path)
    recorder = app.extensions["cds_decisions"]
    templates = [hook_request(name) for name in (SUPPORTED, NOT_NECESSARY, INSUFFICIENT)]
    run = uuid.uuid4().int % 2**32

    def one_client(i: int):
        body = copy.deepcopy(templates[i % 3])
        body["hookInstance"] = hid(run, i)
        t0 = time.perf_counter()
        status, payload = post(base + HOOK, body)
        hook_ms = (time.perf_counter() - t0) * 1000
        card = payload["cards"][0]["uuid"]
        outcome = "accepted" if i % 2 else "overridden"
        fb_status, _ = post(base + FEEDBACK, {"feedback": [feedback_entry(card, outcome, "clinical-judgment")]})
        return body["hookInstance"], card, status, fb_status, hook_ms

    started = time.perf_counter()
    with live_server(app) as base, ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one_client, range(200)))
    wall = time.perf_counter() - started
    assert [r[2] for r in results] == [200] * 200 and [r[3] for r in results] == [200] * 200
    assert recorder.flush(60)
    store = recorder.store
    assert store.counts() == {"hook_calls": 200, "decisions": 200, "feedback": 200}
    assert recorder.dropped == 0 and recorder.rejected == 0
    expected = {card: hook_instance for hook_instance, card, *_ in results}
    q = sa.select(feedback.c.card_uuid, decisions.c.hook_instance).join(
        decisions, decisions.c.card_uuid == feedback.c.card_uuid)
    with store.engine.connect() as conn:
        linked = dict(conn.execute(q).all())
    assert linked == expected  # every feedback linked to the decision that issued its card
    assert len(expected) == 200  # 200 distinct cards
    latencies = sorted(r[4] for r in results)
    with capsys.disabled():
        print(f"\n[{store.dialect}] 200 hook calls + 200 feedback, 16 clients: {wall:.2f} s; "
              f"hook p50 {latencies[100]:.0f} ms, p95 {latencies[190]:.0f} ms")


# -- durability -----------------------------------------------------------------------------------

_EXIT_SCRIPT = """
import json, sys, os
os.environ["CDS_AUTH_REQUIRED"] = "false"
from cds_service import create_app
from cds_service.decisions.store import DecisionStore
url, n, body_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = create_app({"DATABASE_URL": url, "DECISION_BATCH_SIZE": 1})
recorder = app.extensions["cds_decisions"]
store = recorder.store
slow = store.write
def write(batch):  # a slow store: records are still queued when the process exits
    import time; time.sleep(0.01); return slow(batch)
store.write = write
body = json.load(open(body_path))
client = app.test_client()
for i in range(n):
    body["hookInstance"] = f"00000001-0000-4000-8000-{i:012d}"
    assert client.post("/cds-services/order-sign-crd", json=body).status_code == 200
print("pending-at-exit", recorder.pending, flush=True)
sys.exit(0)  # graceful: atexit flushes the queue
"""


def test_records_queued_at_a_graceful_exit_are_stored(database_url, tmp_path):
    body_path = tmp_path / "body.json"
    body_path.write_text(json.dumps(hook_request(SUPPORTED)))
    script = tmp_path / "exit.py"
    script.write_text(_EXIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), database_url, "60", str(body_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    pending = int(proc.stdout.split("pending-at-exit")[1].split()[0])
    assert pending > 0  # the exit really had records to flush
    assert DecisionStore(database_url).counts()["hook_calls"] == 60


def _serve(database_url: str, instance: Path, workers: int = 2) -> tuple[subprocess.Popen, str]:
    from test_serve import _free_port

    port = _free_port()
    env = {**os.environ, "CDS_DATABASE_URL": database_url, "CDS_AUTH_REQUIRED": "false",
           "CDS_INSTANCE_DIR": str(instance), "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cds_service", "serve", "--port", str(port), "--workers",
                             str(workers), "--threads", "4"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if get(base + "/cds-services", timeout=1)[0] == 200:
                return proc, base
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"server did not start: {proc.stdout.read().decode(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()  # SIGTERM: gunicorn's graceful shutdown
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    return out


def test_gunicorn_workers_store_everything_before_a_graceful_stop(database_url, tmp_path):
    """Two gunicorn workers write to one store; SIGTERM right after the last answer loses nothing."""
    proc, base = _serve(database_url, tmp_path / "instance")
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            def one(i):
                status, payload = post(base + HOOK, hook_request(SUPPORTED, hid(2, i)))
                assert status == 200
                card = payload["cards"][0]["uuid"]
                assert post(base + FEEDBACK, {"feedback": [feedback_entry(card)]})[0] == 200
                return card
            cards = list(pool.map(one, range(40)))
        status, text = get(base + "/metrics")
        assert status == 200
    finally:
        out = _stop(proc)
    assert out.count("Booting worker") == 2
    # Both workers' counts in one answer (prometheus multiprocess mode).
    assert 'cds_requests_total{endpoint="hook",service="order-sign-crd",status="200"} 40.0' in text
    # After the restart (a new store object, as a new process has), everything is there.
    store = DecisionStore(database_url)
    assert store.counts() == {"hook_calls": 40, "decisions": 40, "feedback": 40}
    total, items = store.list_decisions({}, limit=100)
    assert sorted(d["cardUuid"] for d in items) == sorted(cards)
    assert all(d["feedbackCount"] == 1 for d in items)


# -- outages (the PostgreSQL server really stopped) -----------------------------------------------

def _metric(app, name: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_store_down_responses_go_out_and_nothing_is_lost_when_it_returns(pg_server, tmp_path, capsys):
    url = pg_server.create_database()
    app = make_app(url, tmp_path)
    recorder = app.extensions["cds_decisions"]
    client = app.test_client()
    for i in range(20):
        assert client.post(HOOK, json=hook_request(SUPPORTED, hid(3, i))).status_code == 200
    assert recorder.flush(30)
    pg_server.stop()
    try:
        slowest = 0.0
        for i in range(100):
            t0 = time.perf_counter()
            resp = client.post(HOOK, json=hook_request(NOT_NECESSARY, hid(4, i)))
            slowest = max(slowest, time.perf_counter() - t0)
            assert resp.status_code == 200
            card = resp.get_json()["cards"][0]["uuid"]
            assert client.post(FEEDBACK, json={"feedback": [feedback_entry(card, "overridden", "patient-informed")]}).status_code == 200
        assert wait_for(lambda: recorder.store_up is False, 10)
        assert recorder.pending == 200
        assert _metric(app, "cds_decision_store_up") == 0.0
        assert _metric(app, "cds_decision_queue_pending") == 200.0
        assert client.get("/api/stats").status_code == 503
        assert slowest < 1.0, f"a response waited for the store: {slowest:.2f} s"
        with capsys.disabled():
            print(f"\n[postgresql down] 100 hook calls + 100 feedback answered, slowest hook call {slowest * 1000:.0f} ms; "
                  f"{recorder.pending} records queued")
    finally:
        pg_server.start()
    assert recorder.flush(30)
    assert recorder.store.counts() == {"hook_calls": 120, "decisions": 120, "feedback": 100}
    assert recorder.dropped == 0 and recorder.store_up is True
    assert _metric(app, "cds_decision_queue_pending") == 0.0 and _metric(app, "cds_decision_store_up") == 1.0
    stats = client.get("/api/stats").get_json()
    assert stats["feedback"]["unknownCards"] == 0 and stats["feedback"]["overrideReasons"] == {"patient-informed": 100}


def test_a_full_queue_drops_the_oldest_and_says_how_many(pg_server, tmp_path, caplog):
    url = pg_server.create_database()
    app = make_app(url, tmp_path, DECISION_QUEUE_SIZE=25)
    recorder = app.extensions["cds_decisions"]
    client = app.test_client()
    pg_server.stop()
    try:
        with caplog.at_level(logging.ERROR, logger="cds_service.decisions.recorder"):
            for i in range(40):
                assert client.post(HOOK, json=hook_request(SUPPORTED, hid(5, i))).status_code == 200
        assert recorder.dropped == 15
        assert _metric(app, "cds_decision_records_dropped_total") == 15.0
        dropped_logs = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
        assert len(dropped_logs) == 15 and f"hookInstance={hid(5, 0)}" in dropped_logs[0]
        assert client.get("/api/stats").status_code == 503
        assert recorder.status()["dropped"] == 15
    finally:
        pg_server.start()
    assert recorder.flush(30)
    with recorder.store.engine.connect() as conn:
        stored = sorted(conn.execute(sa.select(hook_calls.c.hook_instance)).scalars())
    assert stored == [hid(5, i) for i in range(15, 40)]  # the newest 25: the queue bound
    stats = client.get("/api/stats").get_json()
    assert stats["recorder"]["dropped"] == 15 and stats["recorder"]["pending"] == 0


def test_shutdown_while_the_store_is_down_spools_and_the_next_start_stores(pg_server, tmp_path):
    url = pg_server.create_database()
    app = make_app(url, tmp_path)
    recorder = app.extensions["cds_decisions"]
    client = app.test_client()
    pg_server.stop()
    try:
        for i in range(30):
            assert client.post(HOOK, json=hook_request(SUPPORTED, hid(6, i))).status_code == 200
        assert recorder.close(timeout=1.0) == 30
        assert list((tmp_path / "instance" / "decision-spool").glob("spool-*.jsonl"))
    finally:
        pg_server.start()
    restarted = make_app(url, tmp_path).extensions["cds_decisions"]
    assert restarted.flush(30)
    assert restarted.store.counts()["hook_calls"] == 30
    assert not list((tmp_path / "instance" / "decision-spool").iterdir())


def test_start_with_the_store_down_then_it_comes_up(pg_server, tmp_path):
    url = pg_server.create_database()
    pg_server.stop()
    try:
        app = make_app(url, tmp_path)  # starts: the schema waits for the store
        assert app.test_client().post(HOOK, json=hook_request(SUPPORTED, hid(7, 0))).status_code == 200
        recorder = app.extensions["cds_decisions"]
        assert wait_for(lambda: recorder.store_up is False, 10)
    finally:
        pg_server.start()
    assert recorder.flush(30)
    assert recorder.store.revision() == HEAD and recorder.store.counts()["hook_calls"] == 1


def test_a_record_the_store_refuses_does_not_block_the_others(pg_server, tmp_path):
    app = make_app(pg_server.create_database(), tmp_path)
    recorder = app.extensions["cds_decisions"]
    client = app.test_client()
    assert client.post(HOOK, json=hook_request(SUPPORTED, hid(8, 1))).status_code == 200
    assert recorder.flush(30)
    bad = recorder._call_item({"hookInstance": "bad", "service": "order-sign-crd", "status": 200, "traces": []})
    bad["call"]["service"] = "x" * 500  # longer than the column: PostgreSQL refuses it
    with recorder._cv:  # queue it with good ones in the same batch
        recorder._queue.append(bad)
    for i in range(2, 5):
        assert client.post(HOOK, json=hook_request(SUPPORTED, hid(8, i))).status_code == 200
    assert recorder.flush(30)
    assert recorder.rejected == 1
    assert recorder.store.counts()["hook_calls"] == 4


def test_a_trickle_of_calls_is_stored_in_batches_and_flush_does_not_wait_for_them(database_url, tmp_path):
    """DECISION_LINGER_SECONDS: records arriving one by one are written a transaction per batch, not
    one per hook call; a flush writes what is queued at once."""
    from cds_service.decisions.recorder import DecisionRecorder

    store = DecisionStore(database_url)
    store.migrate()
    writes: list[int] = []
    real_write = store.write

    def counting_write(items):
        writes.append(len(items))
        return real_write(items)

    store.write = counting_write
    recorder = DecisionRecorder(store, linger=0.5, batch_size=200)
    for i in range(20):
        recorder.record({"hookInstance": str(uuid.uuid4()), "service": "order-sign-crd", "hook": "order-sign",
                         "receivedAt": "2025-06-01T10:00:00+00:00", "status": 200, "elapsedMs": 1.0, "traces": []})
        time.sleep(0.005)
    started = time.monotonic()
    assert recorder.flush(10)
    assert time.monotonic() - started < 0.4  # the flush did not sit out the linger
    assert sum(writes) == 20 and len(writes) <= 3, writes
    assert store.counts()["hook_calls"] == 20
    # Without a linger each record that finds the writer idle is its own transaction.
    writes.clear()
    eager = DecisionRecorder(store, linger=0.0)
    for i in range(5):
        eager.record({"hookInstance": str(uuid.uuid4()), "service": "order-sign-crd", "hook": "order-sign",
                      "receivedAt": "2025-06-01T10:00:00+00:00", "status": 200, "elapsedMs": 1.0, "traces": []})
        assert eager.flush(10)
    assert writes == [1, 1, 1, 1, 1]
    recorder.close(5)
    eager.close(5)
