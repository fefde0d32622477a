"""HTTP edge of the CDS Hooks protocol: discovery and the hook endpoints."""
from __future__ import annotations

import json
import logging
import time
import traceback

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request

from .errors import outcome_response
from .fhir_client import client_for
from .gather import GatherConfig, allowlist_for, gather
from .sansio.dates import today_in
from .sansio.hook import HookError, Settings, process
from .sansio.records import KeyState
from .services import SERVICES, discovery
from .validation import request_problem

log = logging.getLogger("cds_service.decisions")
bp = Blueprint("cds", __name__)


@bp.get("/cds-services")
def list_services():
    cfg = current_app.config
    return jsonify(discovery(cfg["CODE_SYSTEM_BASE"], cfg["CRD_VERSIONS"]))


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str):
    started = time.perf_counter()
    svc = SERVICES.get(service_id)
    hook = svc["hook"] if svc else None

    def refuse(body: object, status: int, diagnostics: str, code: str, expression: str | None = None):
        # Refused calls are recorded too (status, timing; no traces).
        _record(body if isinstance(body, dict) else {}, service_id, hook, started, status, [])
        return outcome_response(status, diagnostics, code, expression)

    if svc is None:
        return refuse({}, 404, f"no CDS service '{service_id}'; see GET /cds-services", "not-found")
    raw = request.get_data(cache=False)
    try:
        body = parse_body(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return refuse({}, 400, f"request body is not valid JSON: {type(exc).__name__}", "structure")
    if not isinstance(body, dict):
        return refuse({}, 400, "request body must be a JSON object", "structure")
    problem = request_problem(body, svc["hook"])
    if problem:
        return refuse(body, 400, problem[1], "invalid", problem[0])
    cfg = current_app.config
    today = today_in(cfg["TIMEZONE"], cfg["CLOCK"]())
    settings = Settings(
        base=cfg["CODE_SYSTEM_BASE"],
        payer_id_system=cfg["PAYER_ID_SYSTEM"],
        procedure_specific_codes=tuple(cfg["PROCEDURE_SPECIFIC_CODES"]),
        questionnaire_endpoint=(cfg["PUBLIC_BASE_URL"] or request.host_url).rstrip("/") + "/fhir/Questionnaire",
    )
    library = current_app.extensions["cds_library"]
    try:
        try:
            source = _data_source(body, library, today, started)
            result = process(body, library, source, today, settings)
        except HookError:
            raise
        except Exception as exc:  # noqa: BLE001 - FHIR data the evaluation could not read: never a 500
            log.error("evaluation failed on the patient's data: %s hookInstance=%s; answered with a technical "
                      "failure", _where(exc), body.get("hookInstance"))
            result = process(body, library, _Unreadable(type(exc).__name__), today, settings)
    except HookError as exc:
        log.info("refused", extra={"hookInstance": body.get("hookInstance"), "service": service_id, "status": exc.status})
        _record(body, service_id, svc["hook"], started, exc.status, [])
        return outcome_response(exc.status, exc.diagnostics, exc.code, exc.expression)
    except Exception as exc:  # noqa: BLE001 - not even the orders could be read
        log.error("the draft orders could not be evaluated: %s hookInstance=%s", _where(exc),
                  body.get("hookInstance"))
        return refuse(body, 400, f"the request's FHIR resources could not be read ({type(exc).__name__}): "
                      "check them against FHIR R4", "structure", "context")
    elapsed_ms = (time.perf_counter() - started) * 1000
    for trace in result.traces:
        # Decision log: policy version and criterion IDs only, never patient data.
        log.info(
            "decision %s %s %s", trace["revision"], trace["determination"], trace["code"],
            extra={"hookInstance": trace["hookInstance"], "service": service_id, "payer": trace["payer"],
                   "code": trace["code"], "revision": trace["revision"], "determination": trace["determination"],
                   "deciding": trace["deciding"], "advisories": trace["advisories"], "ms": round(elapsed_ms, 1)},
        )
    _record(body, service_id, svc["hook"], started, 200, result.traces)
    return Response(response_bytes(result.body), mimetype="application/json")


def response_bytes(body: dict) -> bytes:
    """orjson; the standard library when a text the client sent is not valid Unicode (a lone
    surrogate, read by ``parse_body``'s fallback and quoted on a card), which it escapes as JSON allows."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def parse_body(raw: bytes) -> object:
    """orjson for the UTF-8 JSON clients send (several times faster than json on 100 KB+ bodies);
    what it refuses (a byte-order mark, UTF-16/32, NaN, lone surrogates) gets the standard library's
    reading, so no request that was accepted before is refused now."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _data_source(body: dict, library, today, started: float):
    """Prefetch, plus what the service queries itself before the request's deadline (contract §4)."""
    cfg = current_app.config
    deadline = float(cfg["FHIR_DEADLINE_SECONDS"])
    reserve = min(float(cfg["FHIR_EVALUATION_RESERVE_SECONDS"]), deadline / 4)
    # started is time.perf_counter(); the gathering runs on time.monotonic()
    spent = time.perf_counter() - started
    config = GatherConfig(
        allowlist=allowlist_for(cfg, g.get("cds_client")),
        deadline=time.monotonic() - spent + deadline - reserve,
        code_base=cfg["CODE_SYSTEM_BASE"],
        max_reads=int(cfg["FHIR_MAX_READS"]),
    )
    return gather(body, library, today, lambda: client_for(current_app.extensions, cfg), config)


def _where(exc: BaseException) -> str:
    """An exception's type and the code it came from — not its message, which may quote patient data."""
    frames = traceback.extract_tb(exc.__traceback__)
    here = next((f for f in reversed(frames) if "cds_service" in f.filename), frames[-1] if frames else None)
    where = f" at {here.filename.rsplit('cds_service/', 1)[-1]}:{here.lineno} ({here.name})" if here else ""
    return f"{type(exc).__name__}{where}"


class _Unreadable:
    """The data source of a second, safe pass after the evaluation failed on malformed FHIR data
    (a resource whose elements have types the evaluation does not expect): no patient data at all,
    so each order is a technical failure whose card says why (contract §10.3)."""

    can_query = True  # the orders get technical-failure cards, not a 412
    trace = None

    def __init__(self, error: str):
        self.why = (f"the patient's FHIR data could not be read ({error}: a resource with elements of the "
                    "wrong type or shape); the incident is logged")

    def state(self, key: str) -> str:
        return KeyState.MISSING

    def resources(self, key: str):
        return None

    def failure(self, key: str) -> str:
        return self.why

    def referenced(self) -> list:
        return []


def _record(body: dict, service_id: str, hook: str, started: float, status: int, traces: list[dict]) -> None:
    """Hand the decision to the recorder (in-memory by default); recording never fails a response."""
    event = {
        "hookInstance": body.get("hookInstance"),
        "service": service_id,
        "hook": hook,
        "receivedAt": current_app.config["CLOCK"]().isoformat(),
        "status": status,
        "elapsedMs": round((time.perf_counter() - started) * 1000, 2),
        "traces": traces,
        "client": getattr(g.get("cds_client"), "iss", None),
        "tenant": g.get("cds_tenant"),
    }
    try:
        current_app.extensions["cds_decisions"].record(event)
    except Exception:  # noqa: BLE001 - the prescriber's response must go out regardless
        log.exception("decision recorder failed for hookInstance=%s", body.get("hookInstance"))
