"""The decision store: SQLAlchemy over SQLite (default) or PostgreSQL, schema by Alembic.

Writes come only from the recorder's writer thread, in batches, one transaction per batch;
a record already stored (same id) is skipped, so a batch retried after an outage is never
doubled. Reads serve the JSON API and ``DecisionRecorder.get``.
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from .models import decisions, feedback, hook_calls, jwt_replay, metadata

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "0002"  # the newest revision in migrations/versions; tests check it is the head
_PG_MIGRATION_LOCK = 0x43445344  # pg_advisory_xact_lock key: one instance migrates at a time


class StoreUnavailable(Exception):
    """The store cannot be reached (connection refused, server down, database locked)."""


def is_unavailable(error: BaseException) -> bool:
    """True for errors that a retry later can cure (the store is down or busy), not bad data."""
    if isinstance(error, StoreUnavailable | exc.OperationalError | exc.InterfaceError | exc.TimeoutError | OSError):
        return True
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return False


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` (as Heroku-style DATABASE_URLs have them) use psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite hands back naive UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    value = utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


class DecisionStore:
    def __init__(self, url: str, *, connect_timeout: int = 5):
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        self._memory = self.dialect == "sqlite" and parsed.database in (None, "", ":memory:")
        # An in-memory SQLite database lives in one connection: share it, one user at a time.
        self._lock = threading.RLock() if self._memory else None
        self.engine = self._make_engine(parsed, connect_timeout)
        self._schema_ready = False
        self._migrate_lock = threading.Lock()  # request threads and the writer may all find the schema not ready

    # -- engine -------------------------------------------------------------------------------
    def _make_engine(self, parsed, connect_timeout: int) -> Engine:
        if self.dialect == "sqlite":
            if self._memory:
                engine = sa.create_engine(
                    self.url, poolclass=StaticPool, connect_args={"check_same_thread": False}
                )
            else:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                engine = sa.create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):
                cur = dbapi_conn.cursor()
                if not self._memory:
                    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
                    cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            return engine
        args: dict[str, Any] = {}
        if self.dialect == "postgresql":
            args["connect_args"] = {"connect_timeout": connect_timeout, "application_name": "cds-coverage-service"}
        return sa.create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=10, **args)

    def _conn(self, write: bool = False):
        return _Guard(self, write)

    def after_fork(self) -> None:
        """In a forked worker: never reuse the parent's connections."""
        self.engine.dispose(close=False)

    def dispose(self) -> None:
        self.engine.dispose()

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    # -- schema -------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic). Safe with several instances at once."""
        from alembic import command
        from alembic.config import Config

        with self._conn(write=True) as conn:
            if self._current_revision(conn) == HEAD:
                self._schema_ready = True
                return
            if self._memory:
                # A new in-memory database (test apps): the models' tables, stamped at the head
                # revision (tests prove the migrations build the same schema).
                metadata.create_all(conn)
                conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
                conn.execute(sa.text("INSERT INTO alembic_version VALUES (:v)"), {"v": HEAD})
                conn.commit()
                self._schema_ready = True
                return
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._conn(write=True) as conn:
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        self._schema_ready = True

    @staticmethod
    def _current_revision(conn) -> str | None:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def revision(self) -> str | None:
        with self._conn() as conn:
            return self._current_revision(conn)

    def ensure_schema(self) -> None:
        if not self._schema_ready:
            with self._migrate_lock:
                if not self._schema_ready:
                    self.migrate()

    # -- writes -------------------------------------------------------------------------------
    def write(self, items: list[Mapping]) -> int:
        """Store a batch of records (``kind`` "call" or "feedback") in one transaction.

        Records whose id is already stored are skipped. Returns how many were new.
        """
        self.ensure_schema()
        calls = [i for i in items if i["kind"] == "call"]
        fbs = [i for i in items if i["kind"] == "feedback"]
        now = datetime.now(timezone.utc)
        new = 0
        with self._conn(write=True) as conn:
            with conn.begin():
                if calls:
                    have = self._existing(conn, hook_calls.c.id, [c["id"] for c in calls])
                    calls = [c for c in calls if c["id"] not in have]
                if calls:
                    conn.execute(hook_calls.insert(), [{**c["call"], "id": c["id"], "recorded_at": now} for c in calls])
                    rows = [{**d, "call_id": c["id"]} for c in calls for d in c["decisions"]]
                    if rows:
                        conn.execute(decisions.insert(), rows)
                if fbs:
                    have = self._existing(conn, feedback.c.id, [f["id"] for f in fbs])
                    fbs = [f for f in fbs if f["id"] not in have]
                if fbs:
                    conn.execute(feedback.insert(), [{**f["row"], "id": f["id"], "recorded_at": now} for f in fbs])
                new = len(calls) + len(fbs)
        return new

    @staticmethod
    def _existing(conn, column, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            found.update(conn.execute(sa.select(column).where(column.in_(ids[start:start + 500]))).scalars())
        return found

    # -- the JWT replay cache ---------------------------------------------------------------------
    def remember_token(self, iss: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Remember a client token id until ``expires_at``. False when it is already remembered and
        not expired at ``now``: a replay.

        Atomic across threads, processes and instances: on PostgreSQL and SQLite (3.35+) one upsert
        that inserts the id or overwrites an expired row, never a live one (``RETURNING`` says
        whether a row was written); elsewhere the expired row of this id is deleted, then the
        insert's unique violation is the replay. Raises like any other store call when the store
        cannot be reached.
        """
        self.ensure_schema()
        if self.dialect in ("postgresql", "sqlite") and self.engine.dialect.insert_returning:
            return self._remember_upsert(iss, jti, expires_at, now)
        return self._remember_insert(iss, jti, expires_at, now)

    def _remember_upsert(self, iss: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        t = jwt_replay
        stmt = insert(t).values(iss=iss, jti=jti, expires_at=expires_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.iss, t.c.jti], set_={"expires_at": stmt.excluded.expires_at},
            where=t.c.expires_at < now,
        ).returning(t.c.iss)
        with self._conn(write=True) as conn:
            with conn.begin():
                return conn.execute(stmt).first() is not None

    def _remember_insert(self, iss: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        t = jwt_replay
        with self._conn(write=True) as conn:
            try:
                with conn.begin():
                    conn.execute(t.delete().where(t.c.iss == iss, t.c.jti == jti, t.c.expires_at < now))
                    conn.execute(t.insert().values(iss=iss, jti=jti, expires_at=expires_at))
            except exc.IntegrityError:
                return False
        return True

    def purge_tokens(self, now: datetime) -> int:
        """Forget the token ids expired at ``now``; how many were removed."""
        with self._conn(write=True) as conn:
            with conn.begin():
                return conn.execute(jwt_replay.delete().where(jwt_replay.c.expires_at < now)).rowcount

    # -- reads --------------------------------------------------------------------------------
    def traces_for(self, hook_instance: str) -> list[dict] | None:
        """The per-order traces of a hook call, in the shape ``hooks`` produced them."""
        q = (
            sa.select(decisions, hook_calls.c.client, hook_calls.c.tenant)
            .join(hook_calls, hook_calls.c.id == decisions.c.call_id)
            .where(decisions.c.hook_instance == hook_instance)
            .order_by(decisions.c.id)
        )
        with self._conn() as conn:
            rows = conn.execute(q).mappings().all()
        return [self._trace(r) for r in rows] or None

    @staticmethod
    def _trace(r: Mapping) -> dict:
        return {
            "hookInstance": r["hook_instance"], "order": r["order_ref"], "code": r["code"], "codes": r["codes"],
            "payer": r["payer"], "policy": r["policy"], "revision": r["revision"], "t0": r["t0"], "r": r["r"],
            "determination": r["determination"], "episodeOf": r["episode_of"], "advisories": r["advisories"],
            "deciding": r["deciding"], "nodes": r["criteria"], "cardUuid": r["card_uuid"],
            "coverageAssertionId": r["coverage_assertion_id"],
        }

    def _filtered(self, query, f: Mapping):
        c = decisions.c
        for key, col in (("payer", c.payer), ("policy", c.policy), ("determination", c.determination),
                         ("service", c.service), ("hookInstance", c.hook_instance), ("revision", c.revision),
                         ("code", c.code), ("cardUuid", c.card_uuid)):
            values = f.get(key)
            if values:
                query = query.where(col.in_(values) if isinstance(values, (list, tuple)) else col == values)
        if f.get("since"):
            query = query.where(c.received_at >= f["since"])
        if f.get("until"):
            query = query.where(c.received_at < f["until"])
        for key, col in (("client", hook_calls.c.client), ("tenant", hook_calls.c.tenant)):
            if f.get(key):
                query = query.where(col == f[key])
        return query

    def list_decisions(self, filters: Mapping, limit: int = 50, offset: int = 0) -> tuple[int, list[dict]]:
        base = sa.select(decisions.c.id).join(hook_calls, hook_calls.c.id == decisions.c.call_id)
        base = self._filtered(base, filters)
        fb_count = (
            sa.select(sa.func.count()).select_from(feedback)
            .where(feedback.c.card_uuid == decisions.c.card_uuid).scalar_subquery()
        )
        q = (
            sa.select(decisions, hook_calls.c.client, hook_calls.c.tenant, hook_calls.c.status,
                      fb_count.label("feedback_count"))
            .join(hook_calls, hook_calls.c.id == decisions.c.call_id)
        )
        q = self._filtered(q, filters).order_by(decisions.c.received_at.desc(), decisions.c.id.desc())
        with self._conn() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(base.subquery())).scalar_one()
            rows = conn.execute(q.limit(limit).offset(offset)).mappings().all()
        return total, [self._summary(r) | {"feedbackCount": r["feedback_count"]} for r in rows]

    @staticmethod
    def _summary(r: Mapping) -> dict:
        return {
            "id": r["id"], "hookInstance": r["hook_instance"], "service": r["service"],
            "receivedAt": _iso(r["received_at"]), "client": r["client"], "tenant": r["tenant"],
            "order": r["order_ref"], "code": r["code"], "codes": r["codes"], "payer": r["payer"],
            "policy": r["policy"], "revision": r["revision"], "determination": r["determination"],
            "cardUuid": r["card_uuid"], "coverageAssertionId": r["coverage_assertion_id"],
        }

    def get_decision(self, decision_id: int) -> dict | None:
        q = (
            sa.select(decisions, hook_calls.c.client, hook_calls.c.tenant, hook_calls.c.status,
                      hook_calls.c.elapsed_ms, hook_calls.c.hook, hook_calls.c.orders,
                      hook_calls.c.fhir_queries.label("call_fhir_queries"),
                      hook_calls.c.fhir_errors.label("call_fhir_errors"), hook_calls.c.fhir_ms)
            .join(hook_calls, hook_calls.c.id == decisions.c.call_id)
            .where(decisions.c.id == decision_id)
        )
        with self._conn() as conn:
            r = conn.execute(q).mappings().first()
            if r is None:
                return None
            fbs = []
            if r["card_uuid"]:
                fbs = conn.execute(
                    sa.select(feedback).where(feedback.c.card_uuid == r["card_uuid"]).order_by(feedback.c.received_at)
                ).mappings().all()
        return {
            **self._summary(r),
            "t0": r["t0"], "r": r["r"], "episodeOf": r["episode_of"], "advisories": r["advisories"],
            "deciding": r["deciding"], "criteria": r["criteria"],
            "fhirQueries": r["fhir_queries"], "fhirErrors": r["fhir_errors"],
            "call": {
                "id": r["call_id"], "hook": r["hook"], "status": r["status"], "elapsedMs": r["elapsed_ms"],
                "orders": r["orders"], "fhirQueries": r["call_fhir_queries"], "fhirErrors": r["call_fhir_errors"],
                "fhirMs": r["fhir_ms"],
            },
            "feedback": [self._feedback(f, r["id"]) for f in fbs],
        }

    @staticmethod
    def _feedback(f: Mapping, decision_id: int | None) -> dict:
        reason = None
        if f["override_code"] or f["override_system"]:
            reason = {"system": f["override_system"], "code": f["override_code"], "display": f["override_display"]}
        return {
            "id": f["id"], "service": f["service"], "card": f["card_uuid"], "decisionId": decision_id,
            "outcome": f["outcome"], "acceptedSuggestions": f["accepted_suggestions"], "overrideReason": reason,
            "hasComment": f["has_comment"], "outcomeTimestamp": _iso(f["outcome_at"]),
            "receivedAt": _iso(f["received_at"]), "client": f["client"], "tenant": f["tenant"],
        }

    def list_feedback(self, limit: int = 50, offset: int = 0, card_uuid: str | None = None) -> tuple[int, list[dict]]:
        linked = (
            sa.select(sa.func.min(decisions.c.id)).where(decisions.c.card_uuid == feedback.c.card_uuid)
            .scalar_subquery()
        )
        q = sa.select(feedback, linked.label("decision_id"))
        count = sa.select(sa.func.count()).select_from(feedback)
        if card_uuid:
            q = q.where(feedback.c.card_uuid == card_uuid)
            count = count.where(feedback.c.card_uuid == card_uuid)
        with self._conn() as conn:
            total = conn.execute(count).scalar_one()
            rows = conn.execute(
                q.order_by(feedback.c.received_at.desc(), feedback.c.id).limit(limit).offset(offset)
            ).mappings().all()
        return total, [self._feedback(f, f["decision_id"]) for f in rows]

    def stats(self, filters: Mapping) -> dict:
        c = decisions.c

        def grouped(conn, col) -> dict:
            q = self._filtered(
                sa.select(col, sa.func.count()).join(hook_calls, hook_calls.c.id == c.call_id), filters
            ).group_by(col)
            return {str(k): n for k, n in conn.execute(q).all()}

        calls_q = sa.select(hook_calls.c.status, sa.func.count()).group_by(hook_calls.c.status)
        fb_q = sa.select(feedback.c.outcome, sa.func.count()).group_by(feedback.c.outcome)
        reason_q = (
            sa.select(feedback.c.override_code, sa.func.count())
            .where(feedback.c.outcome == "overridden").group_by(feedback.c.override_code)
        )
        unmatched_q = sa.select(sa.func.count()).select_from(feedback).where(
            ~sa.exists().where(c.card_uuid == feedback.c.card_uuid)
        )
        for key, col in (("since", "received_at"), ("until", "received_at")):
            if filters.get(key):
                op = (lambda a, b: a >= b) if key == "since" else (lambda a, b: a < b)
                calls_q = calls_q.where(op(hook_calls.c[col], filters[key]))
                fb_q = fb_q.where(op(feedback.c[col], filters[key]))
                reason_q = reason_q.where(op(feedback.c[col], filters[key]))
                unmatched_q = unmatched_q.where(op(feedback.c[col], filters[key]))
        with self._conn() as conn:
            by_status = {str(k): n for k, n in conn.execute(calls_q).all()}
            by_outcome = {k: n for k, n in conn.execute(fb_q).all()}
            return {
                "calls": {"total": sum(by_status.values()), "byStatus": by_status},
                "decisions": {
                    "total": sum(grouped(conn, c.determination).values()),
                    "byDetermination": grouped(conn, c.determination),
                    "byPayer": grouped(conn, c.payer),
                    "byPolicy": grouped(conn, c.policy),
                    "byRevision": grouped(conn, c.revision),
                },
                "feedback": {
                    "total": sum(by_outcome.values()),
                    "byOutcome": by_outcome,
                    "overrideReasons": {str(k): n for k, n in conn.execute(reason_q).all()},
                    "unknownCards": conn.execute(unmatched_q).scalar_one(),
                },
            }

    def counts(self) -> dict[str, int]:
        with self._conn() as conn:
            return {
                t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (hook_calls, decisions, feedback)
            }

    def linked_feedback(self) -> list[tuple[str, int | None]]:
        """(feedback card uuid, id of the decision that issued it or None), for checks and the console."""
        q = sa.select(feedback.c.card_uuid, decisions.c.id).outerjoin(
            decisions, decisions.c.card_uuid == feedback.c.card_uuid
        )
        with self._conn() as conn:
            return [(a, b) for a, b in conn.execute(q).all()]


class _Guard:
    """A connection from the engine; a store-wide lock for in-memory SQLite; errors of
    reaching the store raised as ``StoreUnavailable``."""

    def __init__(self, store: DecisionStore, write: bool):
        self.store = store
        self.conn = None

    def __enter__(self):
        if self.store._lock is not None:
            self.store._lock.acquire()
        try:
            self.conn = self.store.engine.connect()
        except BaseException:
            if self.store._lock is not None:
                self.store._lock.release()
            raise
        return self.conn

    def __exit__(self, *exc_info):
        try:
            self.conn.close()
        finally:
            if self.store._lock is not None:
                self.store._lock.release()
        return False

