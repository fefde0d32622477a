"""The JWT replay cache in the shared store: a client token is accepted once across workers and
instances (apps, verifiers and processes sharing one SQLite file or one PostgreSQL database),
expired ids do not block, concurrent checks accept exactly one, and a store outage falls back
to the per-process cache (logged and counted, never a 500)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from cds_service import create_app
from cds_service.auth import REPLAY_WINDOW_SECONDS, AuthError, TrustedClient, Verifier
from cds_service.decisions.models import jwt_replay
from cds_service.decisions.store import HEAD, MIGRATIONS, DecisionStore, utc
from cds_service.replay import MemoryReplayCache, StoreReplayCache
from conftest import EXAMPLES, REPO, load_json
from decisions_support import database_url  # noqa: F401  (fixture: a SQLite file, or a PostgreSQL database)
from postgres import pg_server  # noqa: F401  (fixture)

ISS = "https://ehr.example.org"
HOOK = "/cds-services/order-sign-crd"
HOOK_URL = "http://localhost" + HOOK
PRIVATE = ec.generate_private_key(ec.SECP384R1())
JWK = {**json.loads(ECAlgorithm.to_jwk(PRIVATE.public_key())), "kid": "ec-1", "alg": "ES384", "use": "sig"}
JWKS = {"keys": [JWK]}
_ = database_url


def token(jti: str | None = None, lifetime: int = 300, **over) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": HOOK_URL, "iat": now, "exp": now + lifetime, "jti": jti or str(uuid.uuid4()), **over}
    return jwt.encode(claims, PRIVATE, algorithm="ES384", headers={"kid": "ec-1", "typ": "JWT"})


def secure_app(url: str, tmp_path, name: str = "a"):
    return create_app({
        "TESTING": True, "AUTH_REQUIRED": True, "TRUSTED_CLIENTS": [{"iss": ISS, "jwks": JWKS}],
        "DATABASE_URL": url, "INSTANCE_DIR": str(tmp_path / f"instance-{name}"), "DECISION_RETRY_MAX_SECONDS": 0.5,
    })


def call(app, tok: str):
    body = load_json(EXAMPLES / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json")
    body["hookInstance"] = str(uuid.uuid4())
    return app.test_client().post(HOOK, json=body, headers={"Authorization": f"Bearer {tok}"})


def verifier(url: str, **kw) -> Verifier:
    """A verifier with a store of its own (its own engine and connections), as in another worker."""
    return Verifier([TrustedClient(iss=ISS, jwks=JWKS)], replay=StoreReplayCache(DecisionStore(url)), **kw)


def metric(app, name: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def rows(url: str) -> list[dict]:
    store = DecisionStore(url)
    with store.engine.connect() as conn:
        found = [dict(r) for r in conn.execute(sa.select(jwt_replay)).mappings()]
    store.dispose()
    return found


# -- shared across apps, verifiers and processes ----------------------------------------------------

def test_a_token_replayed_to_a_second_app_on_the_same_database_is_refused(database_url, tmp_path):
    first, second = secure_app(database_url, tmp_path, "a"), secure_app(database_url, tmp_path, "b")
    assert first.extensions["cds_auth"].replay.store.url == second.extensions["cds_auth"].replay.store.url
    tok = token()
    assert call(first, tok).status_code == 200
    refused = call(second, tok)
    assert refused.status_code == 401 and refused.get_json()["resourceType"] == "OperationOutcome"
    assert call(first, tok).status_code == 401
    other = token()  # and the other way round
    assert call(second, other).status_code == 200
    assert call(first, other).status_code == 401
    assert {r["jti"] for r in rows(database_url)} >= {jwt.decode(t, options={"verify_signature": False})["jti"]
                                                       for t in (tok, other)}


def test_the_id_is_kept_until_exp_and_at_least_the_replay_window(database_url):
    v = verifier(database_url)
    now = time.time()
    short, long_lived = token(lifetime=60), token(lifetime=3600)
    v.verify(short, HOOK_URL)
    v.verify(long_lived, HOOK_URL)
    expiry = {r["jti"]: r["expires_at"] for r in rows(database_url)}
    exp_of = {t: jwt.decode(t, options={"verify_signature": False}) for t in (short, long_lived)}
    kept_short = utc(expiry[exp_of[short]["jti"]]).timestamp()
    kept_long = utc(expiry[exp_of[long_lived]["jti"]]).timestamp()
    assert now + REPLAY_WINDOW_SECONDS - 5 <= kept_short <= time.time() + REPLAY_WINDOW_SECONDS + 1
    assert kept_long == pytest.approx(exp_of[long_lived]["exp"], abs=0.001)


REPLAY_IN_ANOTHER_PROCESS = r"""
import json, sys
from cds_service.auth import AuthError, TrustedClient, Verifier
from cds_service.decisions.store import DecisionStore
from cds_service.replay import StoreReplayCache

url, iss, aud, jwks = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
v = Verifier([TrustedClient(iss=iss, jwks=jwks)], replay=StoreReplayCache(DecisionStore(url)))
out = []
for tok in sys.argv[5:]:
    try:
        v.verify(tok, aud)
        out.append("accepted")
    except AuthError as exc:
        out.append(str(exc))
print(json.dumps(out))
"""


def test_a_token_replayed_to_another_process_is_refused(database_url):
    here = verifier(database_url)
    seen_here, fresh = token(), token()
    here.verify(seen_here, HOOK_URL)
    proc = subprocess.run(
        [sys.executable, "-c", REPLAY_IN_ANOTHER_PROCESS, database_url, ISS, HOOK_URL, json.dumps(JWKS), seen_here, fresh],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["replayed jti", "accepted"]
    with pytest.raises(AuthError, match="replayed jti"):
        here.verify(fresh, HOOK_URL)  # accepted in the other process: a replay here


# -- expiry -----------------------------------------------------------------------------------------

def test_an_expired_id_does_not_block_a_later_token_with_the_same_id(database_url):
    start = time.time()
    clock = {"now": start}
    first = Verifier([TrustedClient(iss=ISS, jwks=JWKS)], clock=lambda: clock["now"],
                     replay=StoreReplayCache(DecisionStore(database_url)))
    second = Verifier([TrustedClient(iss=ISS, jwks=JWKS)], clock=lambda: clock["now"],
                      replay=StoreReplayCache(DecisionStore(database_url)))
    tok = token(jti="reused-id")
    first.verify(tok, HOOK_URL)
    with pytest.raises(AuthError):
        second.verify(tok, HOOK_URL)
    clock["now"] = start + REPLAY_WINDOW_SECONDS - 10  # still remembered
    with pytest.raises(AuthError):
        second.verify(token(jti="reused-id"), HOOK_URL)
    clock["now"] = start + REPLAY_WINDOW_SECONDS + 10  # expired: the id may come again, once
    second.verify(token(jti="reused-id"), HOOK_URL)
    with pytest.raises(AuthError):
        second.verify(token(jti="reused-id"), HOOK_URL)
    assert [r["jti"] for r in rows(database_url)] == ["reused-id"]


@pytest.mark.parametrize("path", ["remember_token", "_remember_insert"])
def test_store_remembers_once_and_overwrites_only_expired_rows(database_url, path):
    store = DecisionStore(database_url)
    store.migrate()
    remember = getattr(store, path)
    now = datetime.now(timezone.utc)
    assert remember(ISS, "a", now + timedelta(seconds=60), now) is True
    assert remember(ISS, "a", now + timedelta(seconds=60), now + timedelta(seconds=30)) is False
    assert remember(ISS, "a", now + timedelta(seconds=60), now + timedelta(seconds=60)) is False  # not yet past
    assert remember("https://other.example.org", "a", now + timedelta(seconds=60), now) is True  # per issuer
    assert remember(ISS, "a", now + timedelta(seconds=200), now + timedelta(seconds=61)) is True
    assert remember(ISS, "a", now + timedelta(seconds=200), now + timedelta(seconds=100)) is False


def test_expired_ids_are_purged_now_and_then(database_url):
    store = DecisionStore(database_url)
    ticks = {"t": 0.0}
    cache = StoreReplayCache(store, purge_interval=60, monotonic=lambda: ticks["t"])
    now = time.time()
    for i in range(5):
        assert cache.seen(ISS, f"old-{i}", now + 10, now) is False
    assert len(rows(database_url)) == 5
    cache.local = MemoryReplayCache()
    later = now + 100
    ticks["t"] = 30  # purged at t=0; the next purge is due at t=60
    assert cache.seen(ISS, "new-1", later + 10, later) is False
    assert len(rows(database_url)) == 6
    ticks["t"] = 61
    assert cache.seen(ISS, "new-2", later + 10, later) is False
    assert sorted(r["jti"] for r in rows(database_url)) == ["new-1", "new-2"]


# -- concurrency --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["remember_token", "_remember_insert"])
def test_concurrent_checks_of_one_id_from_several_workers_accept_exactly_one(database_url, path):
    workers = 6
    stores = [DecisionStore(database_url) for _ in range(workers)]  # one engine each, as in separate processes
    stores[0].migrate()
    now = datetime.now(timezone.utc)
    barrier = threading.Barrier(workers)

    def attempt(store, jti):
        barrier.wait(timeout=30)
        return getattr(store, path)(ISS, jti, now + timedelta(seconds=900), now)

    with ThreadPoolExecutor(workers) as pool:
        for round_ in range(15):
            jti = f"race-{round_}"
            results = list(pool.map(attempt, stores, [jti] * workers))
            assert results.count(True) == 1, (round_, results)
    for store in stores:
        store.dispose()


def test_concurrent_replays_of_one_token_through_separate_verifiers_accept_exactly_one(database_url):
    DecisionStore(database_url).migrate()  # as at start-up
    verifiers = [verifier(database_url) for _ in range(6)]
    barrier = threading.Barrier(len(verifiers))

    def attempt(v, tok):
        barrier.wait(timeout=30)
        try:
            v.verify(tok, HOOK_URL)
            return "accepted"
        except AuthError as exc:
            return str(exc)

    with ThreadPoolExecutor(len(verifiers)) as pool:
        for _ in range(5):
            tok = token()
            results = list(pool.map(attempt, verifiers, [tok] * len(verifiers)))
            assert results.count("accepted") == 1 and set(results) == {"accepted", "replayed jti"}, results


# -- odd token ids -------------------------------------------------------------------------------------

@pytest.mark.parametrize("jti", ["x" * 2000, "nul\x00byte", "lone \ud800 surrogate", "ünïcødé"])
def test_long_or_unstorable_ids_are_stored_as_digests_and_still_refused_once_seen(database_url, jti):
    first, second = verifier(database_url), verifier(database_url)
    tok = token(jti=jti)
    first.verify(tok, HOOK_URL)
    with pytest.raises(AuthError, match="replayed jti"):
        second.verify(tok, HOOK_URL)
    (row,) = rows(database_url)
    assert row["jti"].startswith("sha256:") and len(row["jti"]) == 71


def test_an_exp_beyond_the_year_9999_is_kept_until_then(database_url):
    metrics = _Metrics()
    cache = StoreReplayCache(DecisionStore(database_url), metrics=metrics)
    now = time.time()
    assert cache.seen(ISS, "far", 1e300, now) is False
    cache.local = MemoryReplayCache()  # as seen from another process
    assert cache.seen(ISS, "far", 1e300, now + 100 * 365 * 86400) is True
    assert metrics.replay_fallbacks.value == 0  # answered by the store, not the fallback
    (row,) = rows(database_url)
    assert utc(row["expires_at"]).year == 9999


# -- the store unreachable ------------------------------------------------------------------------------

class _DownStore:
    """A store that cannot be reached (or fails otherwise): every call raises."""

    def __init__(self, error: Exception):
        self.error, self.calls = error, 0

    def remember_token(self, *args):
        self.calls += 1
        raise self.error


class _Counter:
    def __init__(self):
        self.value = 0

    def inc(self, n=1):
        self.value += n


class _Metrics:
    def __init__(self):
        self.replay_fallbacks = _Counter()


@pytest.mark.parametrize("error,level", [
    (sa.exc.OperationalError("INSERT ...", {"jti": "secret-jti"}, Exception("connection refused")), logging.WARNING),
    (ValueError("unexpected secret-jti"), logging.ERROR),
])
def test_store_failure_falls_back_to_this_process_logged_counted_and_retried_later(caplog, error, level):
    store, metrics, ticks = _DownStore(error), _Metrics(), {"t": 100.0}
    cache = StoreReplayCache(store, metrics=metrics, retry_after=5, monotonic=lambda: ticks["t"])
    now = time.time()
    with caplog.at_level(logging.INFO, logger="cds_service.auth"):
        assert cache.seen(ISS, "secret-jti", now + 900, now) is False  # accepted
        assert cache.seen(ISS, "secret-jti", now + 900, now) is True  # replay to this process: refused
        assert cache.seen(ISS, "secret-jti-2", now + 900, now) is False
    assert store.calls == 1  # not tried again within retry_after
    assert metrics.replay_fallbacks.value == 2
    records = [r for r in caplog.records if "replay cache" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == level
    assert "secret" not in caplog.text and "INSERT" not in caplog.text
    ticks["t"] = 106
    assert cache.seen(ISS, "secret-jti-3", now + 900, now) is False
    assert store.calls == 2 and metrics.replay_fallbacks.value == 3


def test_postgresql_down_tokens_are_still_checked_in_process_and_never_a_500(pg_server, tmp_path, caplog):
    url = pg_server.create_database()
    app, other = secure_app(url, tmp_path, "a"), secure_app(url, tmp_path, "b")
    before = token()
    assert call(app, before).status_code == 200
    for a in (app, other):
        a.extensions["cds_auth"].replay.retry_after = 0.2
    pg_server.stop()
    try:
        tok = token()
        with caplog.at_level(logging.WARNING, logger="cds_service.auth"):
            t0 = time.perf_counter()
            assert call(app, tok).status_code == 200  # accepted: the store is down, this process remembers it
            assert time.perf_counter() - t0 < 5
            assert call(app, tok).status_code == 401  # replayed to the same process: refused
            assert call(app, before).status_code == 401  # seen before the outage: still refused here
        assert "shared store unreachable" in caplog.text
        assert tok not in caplog.text and jwt.decode(tok, options={"verify_signature": False})["jti"] not in caplog.text
        assert metric(app, "cds_auth_replay_fallbacks_total") >= 1.0
        assert "Traceback" not in caplog.text
    finally:
        pg_server.start()
    time.sleep(0.3)  # past retry_after: the next token goes to the store again
    after = token()
    assert call(app, after).status_code == 200
    assert call(other, after).status_code == 401  # and shared again
    assert "shared store reachable again" in caplog.text


# -- schema and the in-process cache ------------------------------------------------------------------

def test_a_database_at_revision_0001_is_upgraded_with_the_replay_table(database_url):
    from alembic import command
    from alembic.config import Config

    store = DecisionStore(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.connect() as conn:
        with conn.begin():
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
    assert store.revision() == "0001"
    with store.engine.connect() as conn:
        assert not sa.inspect(conn).has_table("jwt_replay")
    store.migrate()
    assert store.revision() == HEAD == "0002"
    with store.engine.connect() as conn:
        assert sa.inspect(conn).has_table("jwt_replay")
    now = datetime.now(timezone.utc)
    assert store.remember_token(ISS, "x", now + timedelta(seconds=60), now) is True


def test_a_verifier_without_a_store_keeps_ids_in_memory_with_the_same_rules():
    clock = {"now": time.time()}
    v = Verifier([TrustedClient(iss=ISS, jwks=JWKS)], clock=lambda: clock["now"])
    assert isinstance(v.replay, MemoryReplayCache)
    tok = token(jti="mem")
    v.verify(tok, HOOK_URL)
    with pytest.raises(AuthError, match="replayed jti"):
        v.verify(tok, HOOK_URL)
    assert Verifier([TrustedClient(iss=ISS, jwks=JWKS)]).verify(tok, HOOK_URL)  # another process: its own cache
    clock["now"] += REPLAY_WINDOW_SECONDS + 1
    v.verify(token(jti="mem"), HOOK_URL)
    assert len(v.replay) == 1


def test_memory_cache_drops_expired_ids_in_expiry_order():
    cache = MemoryReplayCache()
    for i in range(1000):
        assert cache.seen(ISS, str(i), 100.0 + i, 0.0) is False
    assert cache.seen(ISS, "5", 2000.0, 50.0) is True
    assert cache.seen(ISS, "5", 2000.0, 106.0) is False  # expired at 105
    assert cache.seen(ISS, "600", 2000.0, 650.0) is True
    assert cache.seen(ISS, "x", 2000.0, 1500.0) is False
    assert len(cache) == 2  # "5" (re-remembered until 2000) and "x"
