"""A small JSON API over the decision store (for the operator console).

GET /api/decisions         filters: payer, policy, revision, determination, service, code, hookInstance,
                           cardUuid, client, tenant (repeatable), from, to (ISO date or date-time; to is
                           exclusive), limit (≤ 500), offset
GET /api/decisions/<id>    one decision with its criteria trace, its hook call and its feedback
GET /api/feedback          feedback entries, newest first (card, limit, offset), each with decisionId
GET /api/stats             counts by status, determination, payer, policy, feedback outcome and
                           override reason (from, to, payer, policy…), and the recorder's queue
"""
from __future__ import annotations

import functools
from datetime import date, datetime, time, timedelta, timezone

from flask import Blueprint, current_app, jsonify, request

from .decisions.store import is_unavailable
from .errors import outcome_response

bp = Blueprint("api", __name__, url_prefix="/api")

LIST_FILTERS = ("payer", "policy", "revision", "determination", "service", "code", "hookInstance", "cardUuid")


class BadQuery(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _instant(param: str, end: bool) -> datetime | None:
    raw = request.args.get(param)
    if not raw:
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            # A date "to" includes the whole day.
            return datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=timezone.utc)
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadQuery(param, f"{param} must be an ISO 8601 date or date-time, got {raw!r}") from None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _int(param: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(param)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(param, f"{param} must be an integer") from None
    if not low <= value <= high:
        raise BadQuery(param, f"{param} must be between {low} and {high}")
    return value


def _filters() -> dict:
    f: dict = {}
    for key in LIST_FILTERS:
        values = [v for v in request.args.getlist(key) if v]
        if values:
            f[key] = values
    for key in ("client", "tenant"):
        if request.args.get(key):
            f[key] = request.args[key]
    f["since"] = _instant("from", end=False)
    f["until"] = _instant("to", end=True)
    return f


def _store():
    return current_app.extensions["cds_decisions"].store


@bp.errorhandler(BadQuery)
def _bad_query(exc: BadQuery):
    return outcome_response(400, str(exc), "invalid", exc.param)


def _guarded(view):
    """503 with an OperationOutcome while the store cannot be reached."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except Exception as exc:
            if is_unavailable(exc):
                return outcome_response(503, "the decision store is unavailable; try again later", "transient")
            raise

    return wrapper


@bp.get("/decisions")
@_guarded
def list_decisions():
    limit = _int("limit", 50, 1, 500)
    offset = _int("offset", 0, 0, 10**9)
    total, items = _store().list_decisions(_filters(), limit=limit, offset=offset)
    return jsonify({"total": total, "limit": limit, "offset": offset, "items": items})


@bp.get("/decisions/<int:decision_id>")
@_guarded
def one_decision(decision_id: int):
    # Record ids are 64-bit; anything larger cannot exist (and would overflow the database driver).
    found = _store().get_decision(decision_id) if 0 < decision_id < 2**63 else None
    if found is None:
        return outcome_response(404, f"no decision {decision_id}", "not-found")
    # IDs, values and references only: what the card showed of each node (clinical values) is for
    # the console's decision page, behind its login.
    found["criteria"] = [{k: c.get(k) for k in ("id", "value", "evidence")} for c in found["criteria"] or []]
    return jsonify(found)


@bp.get("/feedback")
@_guarded
def list_feedback():
    limit = _int("limit", 50, 1, 500)
    offset = _int("offset", 0, 0, 10**9)
    total, items = _store().list_feedback(limit=limit, offset=offset, card_uuid=request.args.get("card"))
    return jsonify({"total": total, "limit": limit, "offset": offset, "items": items})


@bp.get("/stats")
@_guarded
def stats():
    recorder = current_app.extensions["cds_decisions"]
    out = _store().stats(_filters())
    out["recorder"] = recorder.status()
    return jsonify(out)
