"""The try-it page's engine: bundled scenarios, and a hook call made in-process.

The console calls the hook endpoint's own view inside a fresh application and request context,
so the evaluation, validation, FHIR rules and decision recording are exactly the service's. It
does not go over HTTP: client authentication (a signed EHR JWT) stays required on the wire, and
the console's login is what authorises this call. Such calls are recorded with client ``console``.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flask import current_app, g, request

from ..config import PACKAGE_DIR
from ..hardening import json_depth
from ..services import SERVICES

log = logging.getLogger("cds_service.console")
CONSOLE_CLIENT = "console"


@dataclass(frozen=True)
class _ConsoleClient:
    """Stands in for an authenticated CDS client on in-process calls (no FHIR servers of its own)."""

    iss: str = CONSOLE_CLIENT
    tenant: str | None = None
    fhir_servers: tuple = ()
    name: str = "console try-it"


@dataclass
class Scenario:
    id: str  # folder/file.json
    folder: str
    title: str
    hook: str
    determination: str | None
    description: str = ""


@dataclass
class TryResult:
    status: int
    service: str
    request: dict | None
    response: object
    elapsed_ms: float
    decisions: list[dict] = field(default_factory=list)
    error: str | None = None


def examples_dir() -> Path:
    configured = current_app.config.get("CONSOLE_EXAMPLES_DIR")
    return Path(configured) if configured else PACKAGE_DIR.parent / "fhir_examples"


def scenarios() -> list[Scenario]:
    root = examples_dir()
    out: list[Scenario] = []
    if not root.is_dir():
        return out
    for index in sorted(root.glob("*/index.json")):
        try:
            entries = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("console: cannot read %s", index)
            continue
        for e in entries if isinstance(entries, list) else []:
            if not isinstance(e, dict) or not isinstance(e.get("file"), str):
                continue
            out.append(Scenario(
                id=f"{index.parent.name}/{e['file']}", folder=index.parent.name, title=str(e.get("title") or e["file"]),
                hook=str(e.get("hook") or "order-sign"),
                determination=(e.get("expected") or {}).get("determination"), description=str(e.get("description") or ""),
            ))
    return out


def load_scenario(scenario_id: str) -> dict | None:
    """A scenario's hook request; only ids the index lists (never a path from the form)."""
    known = {s.id for s in scenarios()}
    if scenario_id not in known:
        return None
    try:
        return json.loads((examples_dir() / scenario_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def service_for(hook: object) -> str | None:
    return next((sid for sid, svc in SERVICES.items() if svc.get("hook") == hook), None)


def parse_request(text: str) -> tuple[dict | None, str | None]:
    raw = text.encode("utf-8")
    limit = int(current_app.config["MAX_JSON_DEPTH"])
    if json_depth(raw) > limit:
        return None, f"JSON nesting deeper than {limit} levels"
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"not valid JSON: {exc}"
    if not isinstance(body, dict):
        return None, "a hook request is a JSON object"
    return body, None


def call(body: dict, service_id: str | None = None) -> TryResult:
    """POST the request to the service's hook endpoint, in-process, and collect what it answered."""
    service_id = service_id or service_for(body.get("hook"))
    if service_id not in SERVICES:
        return TryResult(400, str(service_id), body, None, 0.0,
                         error=f"no CDS service for hook {body.get('hook')!r}; services: {', '.join(SERVICES)}")
    app = current_app._get_current_object()
    view = app.view_functions["cds.call_service"]
    raw = json.dumps(body).encode("utf-8")
    started = time.perf_counter()
    with app.app_context():  # a fresh `g`: the console request's own stays as it is
        with app.test_request_context(f"/cds-services/{service_id}", method="POST", data=raw,
                                      content_type="application/json", base_url=request.host_url):
            g.cds_client = _ConsoleClient()
            g.cds_tenant = None
            try:
                response = app.make_response(view(service_id=service_id))
            except Exception:  # noqa: BLE001 - shown on the page; the incident is logged
                log.exception("console try-it: the hook call failed")
                return TryResult(500, service_id, body, None, (time.perf_counter() - started) * 1000,
                                 error="internal error; the incident was logged")
    elapsed = (time.perf_counter() - started) * 1000
    try:
        payload = json.loads(response.get_data(as_text=True))
    except ValueError:
        payload = response.get_data(as_text=True)
    result = TryResult(response.status_code, service_id, body, payload, elapsed)
    if response.status_code == 200 and isinstance(payload, dict):
        result.decisions = _recorded([c.get("uuid") for c in payload.get("cards") or [] if isinstance(c, dict)])
    return result


def _recorded(card_uuids: list) -> list[dict]:
    """The decision records of the cards just returned (the recorder stores them off the request path)."""
    uuids = [u for u in card_uuids if isinstance(u, str)]
    if not uuids:
        return []
    recorder = current_app.extensions["cds_decisions"]
    recorder.flush(3.0)
    try:
        _total, items = recorder.store.list_decisions({"cardUuid": uuids}, limit=50)
    except Exception:  # noqa: BLE001 - the store may be down; the page says so
        log.warning("console try-it: decision store unavailable")
        return []
    return items


def fresh_instance(body: dict) -> dict:
    """A bundled scenario sent again gets a new hookInstance (one per hook invocation, as CDS Hooks asks)."""
    return {**body, "hookInstance": str(uuid.uuid4())}
