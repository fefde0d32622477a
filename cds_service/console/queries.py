"""Read-only queries over the decision store for the console's dashboard: per-day series.

Counts by status, determination, payer, policy and feedback outcome come from the store's own
``stats``; what it has no query for (series per day, latency percentiles) is read here, with the
store's tables and its connection guard, grouped by UTC day in the database.
"""
from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta, timezone

import sqlalchemy as sa

from ..decisions.models import decisions, feedback, hook_calls

PERCENTILES = (50, 90, 95, 99)


def _day(col, dialect: str):
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", col), "YYYY-MM-DD")
    if dialect == "sqlite":
        return sa.func.strftime("%Y-%m-%d", col)  # SQLite keeps UTC without an offset
    return sa.func.substr(sa.cast(col, sa.String), 1, 10)


def day_range(since: date, until: date) -> list[str]:
    """Every day from since to until inclusive, as YYYY-MM-DD."""
    return [(since + timedelta(days=i)).isoformat() for i in range((until - since).days + 1)]


def bounds(since: date, until: date) -> tuple[datetime, datetime]:
    start = datetime.combine(since, time(), tzinfo=timezone.utc)
    end = datetime.combine(until + timedelta(days=1), time(), tzinfo=timezone.utc)
    return start, end


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (as PostgreSQL's percentile_cont)."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


SOURCES = ("all", "ehr", "console")


def dashboard(store, since: date, until: date, payer: str | None = None, policy: str | None = None,
              source: str = "all", console_client: str = "console") -> dict:
    """Series per UTC day between since and until (inclusive), for calls from any client (``source``
    "all"), from EHRs only ("ehr") or from the console's try-it page only ("console"):

    determinations: {policy: {determination: [count per day]}}
    feedback: per day total and overridden entries (for cards of decisions in the filter), and per policy
    latency: per day p50/p90/p95/p99 (ms) and count of answered hook calls (status 200)
    fhir: per day queries, errors and calls with an error
    """
    days = day_range(since, until)
    index = {d: i for i, d in enumerate(days)}
    start, end = bounds(since, until)
    dialect = store.dialect
    c, h, f = decisions.c, hook_calls.c, feedback.c

    def by_source(q):
        if source == "console":
            return q.where(h.client == console_client)
        if source == "ehr":
            return q.where(sa.or_(h.client.is_(None), h.client != console_client))
        return q

    def scoped(q, table_col):
        q = by_source(q.where(table_col >= start, table_col < end))
        if payer:
            q = q.where(c.payer == payer)
        if policy:
            q = q.where(c.policy == policy)
        return q

    with_calls = decisions.join(hook_calls, hook_calls.c.id == c.call_id)

    dday = _day(c.received_at, dialect).label("day")
    det_q = scoped(sa.select(dday, c.policy, c.determination, sa.func.count()).select_from(with_calls),
                   c.received_at).group_by(
        dday, c.policy, c.determination)

    fday = _day(f.received_at, dialect).label("day")
    overridden = sa.func.sum(sa.case((f.outcome == "overridden", 1), else_=0))
    fb_q = scoped(
        sa.select(fday, c.policy, sa.func.count(), overridden).select_from(
            feedback.join(with_calls, decisions.c.card_uuid == f.card_uuid)), f.received_at,
    ).group_by(fday, c.policy)

    hday = _day(h.received_at, dialect).label("day")
    calls = by_source(sa.select(h.id).where(h.received_at >= start, h.received_at < end))
    if payer or policy:
        # A call counts for the filter when one of its decisions does.
        sub = sa.select(c.call_id)
        sub = sub.where(c.payer == payer) if payer else sub
        sub = sub.where(c.policy == policy) if policy else sub
        calls = calls.where(h.id.in_(sub))
    calls_sub = calls.subquery()
    fhir_q = (
        sa.select(hday, sa.func.coalesce(sa.func.sum(h.fhir_queries), 0), sa.func.coalesce(sa.func.sum(h.fhir_errors), 0),
                  sa.func.sum(sa.case((h.fhir_errors > 0, 1), else_=0)), sa.func.count())
        .where(h.id.in_(sa.select(calls_sub.c.id))).group_by(hday)
    )
    answered = sa.and_(h.id.in_(sa.select(calls_sub.c.id)), h.status == 200, h.elapsed_ms.is_not(None))
    if dialect == "postgresql":
        pcts = [sa.func.percentile_cont(p / 100).within_group(h.elapsed_ms) for p in PERCENTILES]
        lat_q = sa.select(hday, sa.func.count(), *pcts).where(answered).group_by(hday)
    else:
        lat_q = sa.select(hday, h.elapsed_ms).where(answered)

    determinations: dict[str, dict[str, list[int]]] = {}
    fb_days = {"total": [0] * len(days), "overridden": [0] * len(days)}
    fb_policy: dict[str, list[int]] = {}
    fhir = {"queries": [0] * len(days), "errors": [0] * len(days), "callsWithErrors": [0] * len(days),
            "calls": [0] * len(days)}
    latency = {f"p{p}": [None] * len(days) for p in PERCENTILES}
    latency["count"] = [0] * len(days)
    with store._conn() as conn:  # the store's guard (one user at a time for in-memory SQLite)
        for day, pol, det, n in conn.execute(det_q).all():
            if day in index:
                series = determinations.setdefault(pol or "no policy on file", {})
                series.setdefault(det, [0] * len(days))[index[day]] += n
        for day, pol, total, over in conn.execute(fb_q).all():
            if day in index:
                fb_days["total"][index[day]] += total
                fb_days["overridden"][index[day]] += int(over or 0)
                acc = fb_policy.setdefault(pol or "no policy on file", [0, 0])
                acc[0] += total
                acc[1] += int(over or 0)
        for day, queries, errors, with_errors, n in conn.execute(fhir_q).all():
            if day in index:
                i = index[day]
                fhir["queries"][i], fhir["errors"][i] = int(queries or 0), int(errors or 0)
                fhir["callsWithErrors"][i], fhir["calls"][i] = int(with_errors or 0), int(n or 0)
        if dialect == "postgresql":
            for day, n, *values in conn.execute(lat_q).all():
                if day in index:
                    latency["count"][index[day]] = n
                    for p, v in zip(PERCENTILES, values):
                        latency[f"p{p}"][index[day]] = float(v) if v is not None else None
            overall_rows = None
        else:
            per_day: dict[str, list[float]] = {}
            for day, ms in conn.execute(lat_q).all():
                per_day.setdefault(day, []).append(float(ms))
            for day, values in per_day.items():
                if day in index:
                    values.sort()
                    latency["count"][index[day]] = len(values)
                    for p in PERCENTILES:
                        latency[f"p{p}"][index[day]] = percentile(values, p)
            overall_rows = sorted(v for vs in per_day.values() for v in vs)
        if overall_rows is None:
            row = conn.execute(sa.select(*[sa.func.percentile_cont(p / 100).within_group(h.elapsed_ms)
                                           for p in PERCENTILES]).where(answered)).one()
            overall = {f"p{p}": (float(v) if v is not None else None) for p, v in zip(PERCENTILES, row)}
        else:
            overall = {f"p{p}": percentile(overall_rows, p) for p in PERCENTILES}
    overall["count"] = sum(latency["count"])
    return {
        "days": days,
        "determinations": dict(sorted(determinations.items())),
        "feedback": {**fb_days, "byPolicy": {k: {"total": v[0], "overridden": v[1]} for k, v in sorted(fb_policy.items())}},
        "latency": {"days": latency, "overall": overall},
        "fhir": fhir,
    }
