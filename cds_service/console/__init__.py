"""The web console at /console: policies, decisions, try-it and a dashboard, server-rendered.

Access is separate from CDS client authentication: an admin token from configuration
(``CONSOLE_TOKEN``), entered once in a login form that sets a signed session cookie
(``SECRET_KEY``; a random one per start when unset, with a warning). ``CONSOLE_OPEN`` lets
everyone in without a login, and is honoured only in development mode (``DEVELOPMENT``,
``cds-service serve --dev``) and in tests. Every POST carries a CSRF token kept in the session.

Privacy: list pages and the dashboard show codes, policies, determinations and counts only;
identifiers (order and evidence references, hookInstance, card uuid) appear only on a
decision's own page. Patient names are never stored, so never shown.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import deque
from datetime import date, datetime, time as dtime, timedelta, timezone
from urllib.parse import urlsplit

from flask import (
    Blueprint, Flask, abort, current_app, g, jsonify, redirect, render_template, request, session, url_for,
)
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from ..decisions.store import is_unavailable
from ..sansio.cards import EVALUATION_KEY
from . import charts, queries, trees, tryit

log = logging.getLogger("cds_service.console")

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

DETERMINATIONS = ("SUPPORTED", "NOT_MEDICALLY_NECESSARY", "INSUFFICIENT_DOCUMENTATION", "NOT_APPLICABLE",
                  "TECHNICAL_FAILURE")
PAGE_SIZE = 50
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_OPEN_ENDPOINTS = {"console.login", "console.logout", "console.static"}
MAX_FAILURES_PER_MINUTE = 10


# -- set-up -----------------------------------------------------------------------------------------
def init_app(app: Flask) -> None:
    cfg = app.config
    if not cfg.get("CONSOLE_ENABLED", True):
        return
    if not cfg.get("SECRET_KEY"):
        cfg["SECRET_KEY"] = secrets.token_hex(32)
        log.warning("SECRET_KEY is not set: console logins are signed with a random key and end when the "
                    "service restarts (set CDS_SECRET_KEY)")
    cfg["SESSION_COOKIE_PATH"] = cfg.get("SESSION_COOKIE_PATH") or (str(cfg.get("APPLICATION_ROOT") or "/").rstrip("/") + "/console")
    cfg["SESSION_COOKIE_SAMESITE"] = cfg.get("SESSION_COOKIE_SAMESITE") or "Lax"
    cfg["SESSION_COOKIE_HTTPONLY"] = True
    if str(cfg.get("PUBLIC_BASE_URL") or "").startswith("https://"):
        cfg["SESSION_COOKIE_SECURE"] = True
    if cfg.get("CONSOLE_OPEN") and not development(app):
        log.warning("CONSOLE_OPEN is ignored outside development mode: the console asks for CONSOLE_TOKEN")
    elif cfg.get("CONSOLE_OPEN"):
        log.warning("the console is OPEN without a login (CONSOLE_OPEN, development mode)")
    elif not cfg.get("CONSOLE_TOKEN"):
        log.info("console: no CONSOLE_TOKEN configured; /console answers with its login page only")
    elif len(str(cfg["CONSOLE_TOKEN"])) < 16:
        log.warning("CONSOLE_TOKEN is shorter than 16 characters: use a long random token")
    app.extensions["cds_console_failures"] = deque(maxlen=1000)  # (monotonic time, address) of failed logins
    app.register_blueprint(bp)


def development(app: Flask) -> bool:
    return bool(app.config.get("DEVELOPMENT") or app.debug or app.testing)


def is_open() -> bool:
    return bool(current_app.config.get("CONSOLE_OPEN")) and development(current_app)


def _fingerprint(token: str) -> str:
    """Kept in the session instead of the token: a changed CONSOLE_TOKEN ends every login."""
    return hmac.new(current_app.config["SECRET_KEY"].encode() if isinstance(current_app.config["SECRET_KEY"], str)
                    else current_app.config["SECRET_KEY"], token.encode(), hashlib.sha256).hexdigest()


def _logged_in() -> bool:
    token = current_app.config.get("CONSOLE_TOKEN")
    if not token or "console" not in session:
        return False
    hours = current_app.config.get("CONSOLE_SESSION_HOURS")
    hours = 8.0 if hours is None else float(hours)
    if time.time() - float(session.get("console_at", 0)) > hours * 3600:
        return False
    return hmac.compare_digest(str(session["console"]), _fingerprint(str(token)))


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _check_csrf() -> None:
    sent = request.form.get("csrf_token", "")
    if not sent or "csrf" not in session or not hmac.compare_digest(sent, str(session["csrf"])):
        abort(400, description="The form has expired or did not come from this console. Reload the page and try again.")


@bp.before_request
def _guard():
    g.console_open = is_open()
    if request.endpoint in _OPEN_ENDPOINTS:
        return None
    if request.method == "POST":
        _check_csrf()
    if g.console_open or _logged_in():
        return None
    if request.method == "GET":
        return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
    abort(401)


@bp.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_global("csrf_token")
def _csrf_global() -> str:
    return csrf_token()


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return render_template("console/error.html", code=exc.code, name=exc.name, description=exc.description), exc.code


@bp.context_processor
def _globals():
    return {
        "console_open": g.get("console_open", False),
        "logged_in": g.get("console_open", False) or _logged_in(),
        "state_label": trees.STATE_LABELS,
        "state_colours": trees.STATE_COLOURS,
        "state_marks": trees.STATE_MARKS,
        "determination_colours": charts.DETERMINATION_COLOURS,
        "nav": request.endpoint,
    }


# -- helpers ------------------------------------------------------------------------------------------
def _library():
    return current_app.extensions["cds_library"]


def _store():
    return current_app.extensions["cds_decisions"].store


def _today() -> date:
    return current_app.config["CLOCK"]().astimezone(timezone.utc).date()


def _date_arg(name: str) -> date | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        abort(400, description=f"{name} must be a date (YYYY-MM-DD), got {raw!r}")


def _safe_next(target: str | None) -> str:
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/console") and "\\" not in target:
            return target
    return url_for("console.dashboard")


_MD = None


def render_markdown(text: str) -> Markup:
    """A card's detail (CommonMark, as EHRs render it); raw HTML is not passed through."""
    global _MD
    if _MD is None:
        from markdown_it import MarkdownIt

        _MD = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")
    return Markup(_MD.render(text or ""))


@bp.app_template_filter("markdown")
def _markdown_filter(text: str) -> Markup:
    return render_markdown(text)


@bp.app_template_filter("pretty_json")
def _pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _store_unavailable():
    return render_template("console/error.html", code=503, name="Decision store unavailable",
                           description="The decision store cannot be reached; try again later."), 503


# -- login ------------------------------------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
def login():
    token = current_app.config.get("CONSOLE_TOKEN")
    target = _safe_next(request.values.get("next"))
    if is_open():
        return redirect(target)
    error, status = None, 200
    if not token:
        return render_template("console/login.html", configured=False, next=target), 503
    if request.method == "POST":
        _check_csrf()
        now = time.monotonic()
        who = request.remote_addr or "-"
        failures = current_app.extensions["cds_console_failures"]
        recent = sum(1 for t, a in failures if a == who and now - t < 60)
        if recent >= MAX_FAILURES_PER_MINUTE:
            error, status = "Too many failed attempts. Wait a minute and try again.", 429
        elif hmac.compare_digest(hashlib.sha256(request.form.get("token", "").encode()).digest(),
                                 hashlib.sha256(str(token).encode()).digest()):
            session.clear()
            session["console"] = _fingerprint(str(token))
            session["console_at"] = time.time()
            session["csrf"] = secrets.token_urlsafe(32)
            log.info("console login from %s", who)
            return redirect(target)
        else:
            failures.append((now, who))
            log.warning("console login refused from %s", who)
            error, status = "That token is not valid.", 401
    return render_template("console/login.html", configured=True, error=error, next=target), status


@bp.post("/logout")
def logout():
    _check_csrf()
    session.clear()
    return redirect(url_for("console.login"))


# -- dashboard --------------------------------------------------------------------------------------------
@bp.get("/")
def dashboard():
    until = _date_arg("to") or _today()
    since = _date_arg("from") or until - timedelta(days=29)
    if since > until:
        abort(400, description="from must not be after to")
    if (until - since).days > 366:
        abort(400, description="choose at most 366 days")
    payer = request.args.get("payer") or None
    policy = request.args.get("policy") or None
    source = request.args.get("source") or "all"
    if source not in queries.SOURCES:
        abort(400, description=f"source must be one of {', '.join(queries.SOURCES)}")
    library = _library()
    try:
        data = queries.dashboard(_store(), since, until, payer, policy, source, tryit.CONSOLE_CLIENT)
    except Exception as exc:
        if is_unavailable(exc):
            return _store_unavailable()
        raise
    days = data["days"]
    det_charts = []
    for pol, series in data["determinations"].items():
        ordered = [charts.Series(d.replace("_", " ").lower(), series[d], charts.DETERMINATION_COLOURS[d])
                   for d in DETERMINATIONS if d in series]
        det_charts.append((pol, charts.stacked_bars(f"Determinations per day, {pol}", days, ordered),
                           {d: sum(series[d]) for d in DETERMINATIONS if d in series}))
    fb = data["feedback"]
    rate_days = [round(100 * o / t, 1) if t else None for o, t in zip(fb["overridden"], fb["total"])]
    override_line = charts.lines("Override rate per day (feedback)", days,
                                 [charts.Series("overridden", rate_days, charts.SERIES_COLOURS[1])], "%")
    by_policy = [(pol, 100 * v["overridden"] / v["total"] if v["total"] else 0.0,
                  f"{v['overridden']} of {v['total']} ({(100 * v['overridden'] / v['total'] if v['total'] else 0):.0f} %)")
                 for pol, v in fb["byPolicy"].items()]
    override_bars = charts.hbars("Override rate by policy", by_policy)
    lat = data["latency"]["days"]
    latency_chart = charts.lines("Hook call latency percentiles per day", days, [
        charts.Series(f"p{p}", lat[f"p{p}"], charts.SERIES_COLOURS[i]) for i, p in enumerate((50, 90, 99))], "ms")
    fhir = data["fhir"]
    fhir_chart = charts.stacked_bars("FHIR query errors per day", days, [
        charts.Series("query errors", fhir["errors"], "#b3261e")], unit="errors")
    totals = {d: sum(sum(series.get(d, [])) for series in data["determinations"].values()) for d in DETERMINATIONS}
    return render_template(
        "console/dashboard.html", since=since, until=until, payer=payer, policy=policy, source=source, library=library,
        policy_ids=sorted({p.policy_id for p in library.policies}), data=data,
        totals={d: n for d, n in totals.items() if n}, total=sum(totals.values()),
        det_charts=det_charts, override_line=override_line, override_bars=override_bars, rate_days=rate_days,
        latency_chart=latency_chart, fhir_chart=fhir_chart, percentiles=queries.PERCENTILES,
    )


# -- policies ------------------------------------------------------------------------------------------
@bp.get("/policies")
def policies():
    library = _library()
    today = _today()
    payers = []
    for payer in library.payers.values():
        pols = []
        for policy_id in payer.policies:
            revisions = sorted((p for p in library.policies if p.payer == payer.id and p.policy_id == policy_id),
                               key=lambda p: p.effective_start, reverse=True)
            pols.append({"id": policy_id, "title": revisions[0].title if revisions else "", "revisions": revisions})
        payers.append({"payer": payer, "policies": pols})
    return render_template("console/policies.html", payers=payers, today=today)


@bp.get("/policies/<prefix>")
def revision(prefix: str):
    library = _library()
    policy = library.by_prefix(prefix)
    if policy is None:
        abort(404, description=f"No policy revision {prefix} in the library.")
    doc = library.documents.get(prefix) or {}
    vs_ids = trees.value_sets_of(policy, doc, library.valuesets)
    value_sets = [_value_set_view(library.valuesets.get(v)) for v in vs_ids]
    others = sorted((p for p in library.policies if p.policy_id == policy.policy_id and p.payer == policy.payer),
                    key=lambda p: p.effective_start)
    return render_template(
        "console/revision.html", policy=policy, doc=doc, value_sets=value_sets, others=others,
        payer=library.payers.get(policy.payer), param_items=trees.param_items, short_id=trees.short_id,
        today=_today(),
    )


_SYSTEM_NAMES = {
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM", "http://snomed.info/sct": "SNOMED CT", "http://loinc.org": "LOINC",
    "http://www.ama-assn.org/go/cpt": "CPT", "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "HCPCS",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm", "http://nucc.org/provider-taxonomy": "NUCC",
}


def _value_set_view(vs) -> dict:
    def shown(p) -> str:
        return p.glob if p.glob is not None else f"{p.low}–{p.high}"

    return {
        "id": vs.id, "title": vs.title, "includes": list(vs.includes), "names": list(vs.names),
        "systems": [(_SYSTEM_NAMES.get(system, system), [shown(p) for p in patterns],
                     [shown(p) for p in vs.excludes.get(system, [])]) for system, patterns in vs.patterns.items() if patterns],
    }


# -- decisions ---------------------------------------------------------------------------------------
@bp.get("/decisions")
def decisions():
    library = _library()
    sel = {k: request.args.get(k) or "" for k in ("payer", "policy", "determination", "from", "to")}
    since, until = _date_arg("from"), _date_arg("to")
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        abort(400, description="page must be a number")
    filters: dict = {}
    for key in ("payer", "policy", "determination"):
        if sel[key]:
            filters[key] = [sel[key]]
    if since:
        filters["since"] = datetime.combine(since, dtime(), tzinfo=timezone.utc)
    if until:
        filters["until"] = datetime.combine(until + timedelta(days=1), dtime(), tzinfo=timezone.utc)
    try:
        total, items = _store().list_decisions(filters, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    except Exception as exc:
        if is_unavailable(exc):
            return _store_unavailable()
        raise
    pages = max(1, -(-total // PAGE_SIZE))
    query = {k: v for k, v in sel.items() if v}
    return render_template(
        "console/decisions.html", items=items, total=total, page=page, pages=pages, sel=sel, query=query,
        payers=list(library.payers.values()), policy_ids=sorted({p.policy_id for p in library.policies}),
        determinations=DETERMINATIONS, console_client=tryit.CONSOLE_CLIENT,
    )


@bp.get("/decisions/<int:decision_id>")
def decision(decision_id: int):
    try:
        found = _store().get_decision(decision_id) if 0 < decision_id < 2**63 else None
    except Exception as exc:
        if is_unavailable(exc):
            return _store_unavailable()
        raise
    if found is None:
        abort(404, description=f"No decision {decision_id}.")
    library = _library()
    policy = library.by_prefix(found["revision"]) if found.get("revision") else None
    root = trees.evaluated_tree(found.get("criteria") or [], policy, found.get("deciding"))
    drawing = trees.layout(root) if root is not None else None
    cfg = current_app.config
    endpoint = (cfg["PUBLIC_BASE_URL"] or request.host_url).rstrip("/") + "/fhir/Questionnaire"
    card = trees.card_of(found, library, endpoint, cfg["CODE_SYSTEM_BASE"])
    counts = {s: 0 for s in ("met", "not-met", "unknown")}
    for n in drawing.nodes if drawing else []:
        if n.state in counts:
            counts[n.state] += 1
    return render_template("console/decision.html", d=found, policy=policy, drawing=drawing, card=card,
                           counts=counts, payer=library.payers.get(found.get("payer") or ""), trees=trees)


# -- try it ---------------------------------------------------------------------------------------------
@bp.route("/try", methods=["GET", "POST"])
def try_it():
    scenarios = tryit.scenarios()
    folders: dict[str, list] = {}
    for s in scenarios:
        folders.setdefault(s.folder, []).append(s)
    selected = request.values.get("scenario") or (scenarios[0].id if scenarios else "")
    pasted = request.form.get("request", "") if request.method == "POST" else ""
    result, error, status = None, None, 200
    if request.method == "POST":
        action = request.form.get("action", "scenario")
        if action == "paste":
            body, error = tryit.parse_request(pasted)
        else:
            body = tryit.load_scenario(selected)
            body = tryit.fresh_instance(body) if body is not None else None
            error = None if body is not None else "choose one of the listed scenarios"
        if error:
            status = 400
        else:
            result = tryit.call(body)
    cards = []
    if result is not None and isinstance(result.response, dict):
        by_card = {d["cardUuid"]: d for d in result.decisions}
        for c in result.response.get("cards") or []:
            if isinstance(c, dict):
                cards.append({"card": c, "evaluation": (c.get("extension") or {}).get(EVALUATION_KEY) or {},
                              "decision": by_card.get(c.get("uuid"))})
    return render_template("console/try.html", folders=folders, selected=selected, pasted=pasted, result=result,
                           cards=cards, error=error, actions=_actions(result)), status


@bp.get("/try/scenario")
def scenario_json():
    body = tryit.load_scenario(request.args.get("id", ""))
    if body is None:
        abort(404, description="no such scenario")
    return jsonify(body)


def _actions(result) -> list[dict]:
    """The coverage-information of each systemAction, flattened for a table."""
    out = []
    if result is None or not isinstance(result.response, dict):
        return out
    for action in result.response.get("systemActions") or []:
        res = action.get("resource") or {}
        for ext in res.get("extension") or []:
            if not str(ext.get("url", "")).endswith("ext-coverage-information"):
                continue
            values: dict = {}
            for e in ext.get("extension") or []:
                key = e.get("url")
                value = next((v for k, v in e.items() if k.startswith("value")), None)
                if isinstance(value, dict):
                    value = value.get("reference") or value.get("code") or json.dumps(value)
                values.setdefault(key, []).append(value)
            out.append({"resource": f"{res.get('resourceType')}/{res.get('id')}", "type": action.get("type"),
                        "values": {k: ", ".join(str(x) for x in v) for k, v in values.items()}})
    return out
