"""Decision records: every hook call and card feedback, stored off the request path.

SQLite in the instance folder by default, PostgreSQL (or any SQLAlchemy URL) when
``DATABASE_URL`` says so; the schema is migrated by Alembic at start-up.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Flask

from .recorder import DecisionRecorder
from .store import DecisionStore, is_unavailable

__all__ = ["DecisionRecorder", "DecisionStore", "database_url", "init_app"]

log = logging.getLogger("cds_service.decisions")


def instance_dir(app: Flask) -> Path:
    return Path(app.config.get("INSTANCE_DIR") or app.instance_path)


def database_url(app: Flask) -> str:
    """Configured URL (``DATABASE_URL`` / ``CDS_DATABASE_URL``), else SQLite in the instance folder
    (in memory for apps created with ``TESTING`` and no URL)."""
    url = app.config.get("DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return str(url)
    if app.config.get("TESTING"):
        return "sqlite://"
    return f"sqlite:///{instance_dir(app) / 'decisions.sqlite3'}"


def init_app(app: Flask, metrics=None) -> DecisionRecorder:
    cfg = app.config
    store = DecisionStore(database_url(app))
    try:
        store.migrate()
    except Exception as exc:  # noqa: BLE001
        if not is_unavailable(exc):
            raise
        # Start anyway: responses never depend on the store; the writer migrates once it is back.
        log.error("decision store %s unavailable at start-up (%s): records wait in the queue",
                  store.describe(), type(exc).__name__)
    library = app.extensions.get("cds_library")
    policy_ids = {p.prefix: p.policy_id for p in library.policies} if library else {}
    spool = cfg.get("DECISION_SPOOL_DIR")
    if spool is None and not store._memory:
        spool = instance_dir(app) / "decision-spool"
    recorder = DecisionRecorder(
        store,
        capacity=int(cfg["DECISION_QUEUE_SIZE"]),
        batch_size=int(cfg["DECISION_BATCH_SIZE"]),
        linger=float(cfg["DECISION_LINGER_SECONDS"]),
        retry_max=float(cfg["DECISION_RETRY_MAX_SECONDS"]),
        flush_timeout=float(cfg["DECISION_FLUSH_TIMEOUT_SECONDS"]),
        spool_dir=spool or None,
        policy_of=lambda revision: policy_ids.get(revision) if revision else None,
        metrics=metrics,
    )
    recorder.load_spool()
    return recorder
