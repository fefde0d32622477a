"""Recording off the request path: a bounded queue and one writer thread per process.

``record(event)`` (a hook call) and ``record_feedback(...)`` turn what they are handed into
store rows at once — IDs, codes, truth values and ``Type/id`` references only — and queue
them; the writer thread stores them in batches. The response never waits for the store:

* store down or locked: the batch goes back to the head of the queue and is retried with
  backoff; ``cds_decision_store_up`` is 0 and the queue gauge grows; nothing is lost while
  the queue has room.
* queue full: the oldest pending record is dropped, counted (``dropped``, metric
  ``cds_decision_records_dropped_total``) and logged with its hookInstance — never silently.
* a record the store rejects as such (not an outage) is set aside after one retry alone,
  counted as ``rejected`` and logged; it never blocks the others.
* shutdown (atexit, gunicorn worker exit): the queue is flushed; records that still cannot be
  stored are written to a spool file in the instance folder and queued again at the next
  start, and the count is logged.
"""
from __future__ import annotations

import atexit
import glob
import itertools
import json
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..traces import TraceBuffer
from .store import DecisionStore, is_unavailable

log = logging.getLogger("cds_service.decisions.recorder")

_REF = re.compile(r"^(?:[A-Za-z]{1,64}/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?|urn:uuid:[0-9a-fA-F\-]{36}|#[A-Za-z0-9\-.]{1,64})$")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-.:/#|]{1,128}$")
_VALUES = {"TRUE", "FALSE", "UNKNOWN"}

_live: "weakref.WeakSet[DecisionRecorder]" = weakref.WeakSet()


def _token(value, limit: int = 128) -> str | None:
    """A code, ID or reference: kept if it looks like one, else dropped (never free text)."""
    if value is None:
        return None
    text = str(value)
    return text[:limit] if _TOKEN.match(text[:limit]) else None


def _text(value, limit: int) -> str | None:
    """Free text as sent (a hookInstance, a card id): cut to ``limit`` and made storable — lone
    surrogates and NUL (which SQLite or PostgreSQL refuse) written as escapes, so the record is kept."""
    if value is None:
        return None
    text = str(value)[:limit]
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _ref(value) -> str | None:
    text = str(value) if value is not None else ""
    return text if _REF.match(text) else None


def _count(value) -> int | None:
    """FHIR query counts arrive as a number or as a list of queries/errors."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    return None


def _ms(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _when(value) -> datetime:
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            dt = datetime.now(timezone.utc)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


_BORN = re.compile(r"\bborn\s+\S+?(?=[:,;)]|\s|$)", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def shown_text(value) -> str | None:
    """An engine-written description the card detail shows (evidence: resource, value, unit, date;
    resolution; note), as stored: one line, at most 600 characters, birth dates withheld. The engine
    writes these from coded data, numbers, dates and references, never from names."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = _BORN.sub("born [date withheld]", _CONTROL.sub(" ", value)).strip()
    if not text.isascii():  # lone surrogates (from a request's text) as escapes: the store refuses them
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 600 else text[:599] + "…"


def criteria(nodes: Iterable) -> list[dict]:
    """The criteria trace as stored: ID, truth value, evidence references and, when the trace has
    them, what the card detail showed of the node (``text`` per evidence, ``resolution``, ``note``,
    via ``shown_text``) for the console's decision page. The JSON API leaves those out."""
    out = []
    for n in nodes or []:
        if not isinstance(n, dict):
            continue
        value = str(n.get("value"))
        row = {
            "id": _token(n.get("id"), 256),
            "value": value if value in _VALUES else None,
            "evidence": [r for r in (_ref(e) for e in n.get("evidence") or []) if r],
        }
        texts = [t for t in (shown_text(t) for t in (n.get("text") or [])[:10]) if t]
        if texts:
            row["text"] = texts
        for key in ("resolution", "note"):
            text = shown_text(n.get(key))
            if text:
                row[key] = text
        out.append(row)
    return out


class DecisionRecorder:
    """The ``cds_decisions`` extension: ``record``, ``record_feedback``, ``get``, ``flush``, ``close``."""

    def __init__(
        self,
        store: DecisionStore,
        *,
        capacity: int = 10000,
        batch_size: int = 200,
        linger: float = 0.0,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
        flush_timeout: float = 10.0,
        spool_dir: str | os.PathLike | None = None,
        policy_of: Callable[[str | None], str | None] | None = None,
        metrics=None,
        recent: int = 1000,
    ):
        self.store = store
        self.capacity = max(1, int(capacity))
        self.batch_size = max(1, int(batch_size))
        self.linger = max(0.0, float(linger))  # wait for a fuller batch (seconds); flush and close do not
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.flush_timeout = flush_timeout
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self.policy_of = policy_of or (lambda revision: None)
        self.metrics = metrics
        self.recent = TraceBuffer(recent)
        self._init_process_state()
        self.stored = 0
        self.dropped = 0
        self.rejected = 0
        self.store_up: bool | None = None
        self.last_error: str | None = None
        _live.add(self)

    def _init_process_state(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._queue: deque[dict] = deque()
        self._inflight = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._flushing = 0  # flush() calls under way: the writer does not linger for them
        # Record ids: a random prefix per process and a counter (uuid4 per record is slow where
        # the kernel's random source is).
        self._id_prefix = uuid.uuid4().hex[:20]
        self._seq = itertools.count(1)
        self._wake = threading.Event()  # cuts a retry backoff short (close)
        self._batch: list[dict] = []
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        # A forked worker starts with an empty queue (the parent stores its own), fresh locks
        # and no connections of the parent's.
        self._init_process_state()
        self.recent = TraceBuffer(self.recent.capacity)
        self.store.after_fork()
        self._gauge()

    # -- intake (request threads) -----------------------------------------------------------------
    def record(self, event: Mapping) -> None:
        """A hook call, as ``hooks._record`` builds it: counted now, turned into rows and stored by
        the writer thread (the request pays for a queue append)."""
        event = dict(event)
        if not event.get("client") or not event.get("tenant"):
            for key, value in _request_client().items():
                if not event.get(key):
                    event[key] = value
        self.recent.record(event)
        if self.metrics is not None:
            self.metrics.observe_event(event, self.policy_of)
        hook_instance = event.get("hookInstance")
        self._put({"kind": "call", "id": self._new_id(), "event": event,
                   "hookInstance": _text(hook_instance, 128)})

    def record_feedback(self, service: str, entries: list[Mapping], client: str | None = None,
                        tenant: str | None = None, received_at: datetime | None = None) -> list[str]:
        """Validated feedback entries (see ``feedback.py``); returns the ids they are stored under."""
        received = _when(received_at or datetime.now(timezone.utc))
        ids = []
        for e in entries:
            reason = (e.get("overrideReason") or {}).get("reason") or {}
            item = {
                "kind": "feedback",
                "id": self._new_id(),
                "hookInstance": None,
                "row": {
                    "service": _token(service, 64) or "-",
                    "card_uuid": _text(e["card"], 128),
                    "outcome": e["outcome"],
                    "accepted_suggestions": [
                        {"id": str(s.get("id"))[:128]} for s in e.get("acceptedSuggestions") or [] if isinstance(s, Mapping)
                    ],
                    "override_system": _token(reason.get("system"), 256),
                    "override_code": _token(reason.get("code"), 128),
                    "override_display": _text(reason["display"], 256) if reason.get("code") and reason.get("display") else None,
                    "has_comment": bool((e.get("overrideReason") or {}).get("userComment")),
                    "outcome_at": _when(e["outcomeTimestamp"]),
                    "received_at": received,
                    "client": _text(client, 256) if client else None,
                    "tenant": _text(tenant, 128) if tenant else None,
                },
            }
            if self.metrics is not None:
                self.metrics.observe_feedback(item)
            self._put(item)
            ids.append(item["id"])
        return ids

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._seq):016x}"

    def _call_item(self, event: Mapping) -> dict:
        traces = [t for t in event.get("traces") or [] if isinstance(t, dict)]
        received = _when(event.get("receivedAt"))
        service = _token(event.get("service"), 64) or "-"
        hook_instance = _text(event.get("hookInstance"), 128)
        fhir_q, fhir_e = _count(event.get("fhirQueries")), _count(event.get("fhirErrors"))
        if fhir_q is None and any("fhirQueries" in t for t in traces):
            fhir_q = sum(_count(t.get("fhirQueries")) or 0 for t in traces)
        if fhir_e is None and any("fhirErrors" in t for t in traces):
            fhir_e = sum(_count(t.get("fhirErrors")) or 0 for t in traces)
        fhir_ms = _ms(event.get("fhirMs", event.get("fhirElapsedMs")))
        rows = []
        for t in traces:
            revision = _token(t.get("revision"), 64)
            codes = t.get("codes") if isinstance(t.get("codes"), list) else [t.get("code")]
            rows.append({
                "hook_instance": hook_instance,
                "service": service,
                "received_at": received,
                "order_ref": _ref(t.get("order")),
                "code": _token(t.get("code"), 64),
                "codes": [c for c in (_token(c, 64) for c in codes) if c],
                "payer": _token(t.get("payer"), 64),
                "policy": _token(t.get("policy"), 64) or _token(self.policy_of(revision), 64),
                "revision": revision,
                "determination": _token(t.get("determination"), 40) or "UNKNOWN",
                "t0": _token(t.get("t0"), 10),
                "r": _token(t.get("r"), 10),
                "episode_of": _ref(t.get("episodeOf")) or _token(t.get("episodeOf"), 256),
                "advisories": [a for a in (_token(a, 64) for a in t.get("advisories") or []) if a],
                "deciding": [d for d in (_token(d, 256) for d in t.get("deciding") or []) if d],
                "criteria": criteria(t.get("nodes")),
                "card_uuid": _token(t.get("cardUuid"), 64),
                "coverage_assertion_id": _token(t.get("coverageAssertionId"), 128),
                "fhir_queries": _count(t.get("fhirQueries")),
                "fhir_errors": _count(t.get("fhirErrors")),
            })
        client = event.get("client")
        tenant = event.get("tenant")
        return {
            "kind": "call",
            "id": self._new_id(),
            "hookInstance": hook_instance,
            "call": {
                "hook_instance": hook_instance,
                "service": service,
                "hook": _token(event.get("hook"), 64),
                "received_at": received,
                "status": int(event.get("status") or 0),
                "elapsed_ms": _ms(event.get("elapsedMs")),
                "client": _text(client, 256) if client else None,
                "tenant": _text(tenant, 128) if tenant else None,
                "orders": len(rows),
                "fhir_queries": fhir_q,
                "fhir_errors": fhir_e,
                "fhir_ms": fhir_ms,
            },
            "decisions": rows,
        }

    def _put(self, item: dict) -> None:
        dropped = None
        with self._cv:
            if self._queue and len(self._queue) + self._inflight >= self.capacity:
                dropped = self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
            self._ensure_writer()
            self._cv.notify_all()
        self._gauge()
        if dropped is not None:
            self._report_drop([dropped])

    def _report_drop(self, items: list[dict]) -> None:
        if self.metrics is not None:
            self.metrics.records_dropped.inc(len(items))
        for it in items:
            log.error(
                "decision queue full (capacity %d): dropped the oldest pending %s record hookInstance=%s id=%s; "
                "%d dropped since start", self.capacity, it["kind"], it.get("hookInstance"), it["id"], self.dropped,
            )

    # -- state ------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue) + self._inflight

    def status(self) -> dict:
        return {
            "pending": self.pending, "capacity": self.capacity, "stored": self.stored, "dropped": self.dropped,
            "rejected": self.rejected, "storeUp": self.store_up, "lastError": self.last_error,
            "store": self.store.describe(),
        }

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_pending.set(len(self._queue) + self._inflight)

    def _set_up(self, up: bool, error: BaseException | None = None) -> None:
        if error is not None:
            self.last_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        if up != self.store_up:
            if up:
                log.info("decision store reachable (%s); %d records pending", self.store.describe(), self.pending)
            else:
                log.error("decision store unavailable (%s): %s; records wait in the queue (%d pending)",
                          self.store.describe(), self.last_error, self.pending)
        self.store_up = up
        if self.metrics is not None:
            self.metrics.store_up.set(1 if up else 0)

    # -- the writer thread ----------------------------------------------------------------------
    def _ensure_writer(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="cds-decision-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        delay = self.retry_initial
        while True:
            with self._cv:
                if self._closing and self.store_up is False:
                    self._thread = None
                    self._cv.notify_all()
                    return
                while not self._queue:
                    if self._closing or not self._cv.wait(timeout=5.0):
                        if not self._queue:  # idle (or closing): the thread ends; _put starts another
                            self._thread = None
                            self._cv.notify_all()
                            return
                self._linger()
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                self._inflight = len(batch)
                self._batch = batch
            try:
                stored = self._write(batch)
            except BaseException as error:  # noqa: BLE001 - the writer must survive anything
                self._requeue(batch)
                self._set_up(False, error)
                if self.metrics is not None:
                    self.metrics.store_errors.inc()
                with self._cv:
                    if self._closing:
                        self._thread = None
                        self._cv.notify_all()
                        return
                self._wake.wait(timeout=delay)  # cut short by close()
                delay = min(self.retry_max, delay * 2)
                continue
            delay = self.retry_initial
            self._set_up(True)
            with self._cv:
                self._inflight = 0
                self._batch = []
                self.stored += stored
                self._cv.notify_all()
            self._gauge()

    def _linger(self) -> None:
        """With the lock held and records queued: wait up to ``linger`` for a full batch, so that a
        steady trickle of hook calls is stored a transaction per batch, not one per call."""
        if self.linger <= 0:
            return
        until = time.monotonic() + self.linger
        while len(self._queue) < self.batch_size and not self._closing and not self._flushing:
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(timeout=left)

    def _prepared(self, item: dict) -> dict:
        """A queued hook call turned into its rows (once; kept in the item for retries)."""
        event = item.get("event")
        if event is not None:  # idempotent: the spool may prepare a batch the writer is preparing
            rows = self._call_item(event)
            item["call"], item["decisions"] = rows["call"], rows["decisions"]
            item.pop("event", None)
        return item

    def _write(self, batch: list[dict]) -> int:
        """Store a batch; on bad data (not an outage), store what can be stored and set the rest aside."""
        started = time.perf_counter()
        for item in batch:
            try:
                self._prepared(item)
            except Exception:  # noqa: BLE001 - an event that cannot be read is set aside, not retried
                item["unreadable"] = True
        unreadable = [i for i in batch if i.pop("unreadable", False)]
        if unreadable:
            self.rejected += len(unreadable)
            for item in unreadable:
                log.error("unreadable decision event hookInstance=%s id=%s set aside", item.get("hookInstance"), item["id"])
            batch = [i for i in batch if i not in unreadable]
        try:
            n = self.store.write(batch)
        except BaseException as error:
            if is_unavailable(error) or len(batch) == 0:
                raise
            n = 0
            for item in batch:  # find the record the store refuses
                try:
                    n += self.store.write([item])
                except BaseException as single:
                    if is_unavailable(single):
                        raise
                    self.rejected += 1
                    if self.metrics is not None:
                        self.metrics.records_rejected.inc()
                    log.error("decision store refused %s record hookInstance=%s id=%s: %s", item["kind"],
                              item.get("hookInstance"), item["id"], type(single).__name__)
        if self.metrics is not None:
            self.metrics.store_write_seconds.observe(time.perf_counter() - started)
            for item in batch:
                self.metrics.records_stored.labels(item["kind"]).inc()
        return n

    def _requeue(self, batch: list[dict]) -> None:
        dropped = []
        with self._cv:
            self._inflight = 0
            self._batch = []
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.capacity:
                dropped.append(self._queue.popleft())
                self.dropped += 1
        self._gauge()
        if dropped:
            self._report_drop(dropped)

    # -- flush, shutdown, spool -------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every pending record is stored; False if the timeout passed first."""
        deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
        with self._cv:
            self._flushing += 1
            self._cv.notify_all()  # a lingering writer writes now
            try:
                while self._queue or self._inflight:
                    self._ensure_writer()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cv.wait(timeout=min(left, 0.05))
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float | None = None) -> int:
        """Flush (graceful shutdown); spool what the store could not take. Returns the count spooled."""
        if os.getpid() != self._pid:
            return 0
        flushed = self.flush(timeout)
        with self._cv:
            self._closing = True
            self._wake.set()
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        with self._cv:
            # A write still under way when the join gave up: spool its batch too (a record
            # stored twice is recognised by its id and skipped).
            left = (list(self._batch) if self._inflight else []) + list(self._queue)
            self._queue.clear()
            # Handed to the spool: a second close (worker exit, then atexit) must not spool them again.
            self._batch, self._inflight = [], 0
            self._closing = False
            self._wake.clear()
        if flushed and not left:
            return 0
        spooled = self._spool(left)
        if spooled:
            log.error("decision store unavailable at shutdown: %d records written to the spool %s; they are "
                      "stored at the next start", spooled, self.spool_dir)
        elif left:
            log.error("decision store unavailable at shutdown: %d records could not be stored", len(left))
            self.dropped += len(left)
            self._report_drop(left)
        return spooled

    def _spool(self, items: list[dict]) -> int:
        if not items or self.spool_dir is None:
            return 0
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            path = self.spool_dir / f"spool-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                for it in items:
                    fh.write(json.dumps(self._prepared(it), default=_json_default) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            return len(items)
        except OSError:
            log.exception("cannot write the decision spool in %s", self.spool_dir)
            return 0

    def load_spool(self) -> int:
        """Queue the records an earlier shutdown spooled (each file claimed by one process)."""
        if self.spool_dir is None or not self.spool_dir.is_dir():
            return 0
        count = 0
        for name in sorted(glob.glob(str(self.spool_dir / "spool-*.jsonl"))):
            claimed = f"{name}.claimed-{os.getpid()}"
            try:
                os.rename(name, claimed)  # atomic: another worker or instance gets nothing
            except OSError:
                continue
            try:
                with open(claimed, encoding="utf-8") as fh:
                    for line in fh:
                        if line.strip():
                            self._put(_revive(json.loads(line)))
                            count += 1
                os.unlink(claimed)
            except (OSError, ValueError):
                log.exception("cannot read the decision spool file %s", claimed)
        if count:
            log.info("queued %d decision records from the spool", count)
        return count

    def get(self, hook_instance: str) -> list[dict] | None:
        """The per-order traces of a hook call: from this process's recent calls, else the store."""
        found = self.recent.get(hook_instance)
        if found:
            return found
        try:
            return self.store.traces_for(hook_instance)
        except Exception:  # noqa: BLE001 - the store may be down
            return None


def _request_client() -> dict:
    """The authenticated CDS client and tenant of the current request (auth sets them on ``g``)."""
    try:
        from flask import g, has_request_context
    except ImportError:  # pragma: no cover
        return {}
    if not has_request_context():
        return {}
    client = g.get("cds_client")
    if client is None:
        return {}
    return {"client": getattr(client, "iss", None), "tenant": g.get("cds_tenant") or getattr(client, "tenant", None)}


def _json_default(value):
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    raise TypeError(type(value).__name__)


def _revive(item: dict) -> dict:
    def walk(v):
        if isinstance(v, dict):
            if set(v) == {"$dt"}:
                return datetime.fromisoformat(v["$dt"])
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(item)


def _after_fork_all() -> None:
    for recorder in list(_live):
        recorder._after_fork()


os.register_at_fork(after_in_child=_after_fork_all)


@atexit.register
def _close_all() -> None:  # pragma: no cover - exercised by the restart tests in a subprocess
    for recorder in list(_live):
        try:
            recorder.close()
        except Exception:  # noqa: BLE001
            log.exception("flushing decision records at exit failed")
