"""POST /cds-services/{id}/feedback (CDS Hooks 2.0 Feedback): what the prescriber did with a card.

Entries are validated (400 with an OperationOutcome naming each bad element), then queued for
the decision store like decision records, and linked to the decision that issued the card by
its uuid. A card uuid this service never issued is accepted (200) and stored unlinked: the
client may hold cards from an earlier deployment, and refusing would only lose the outcome.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime

from flask import Blueprint, current_app, g, jsonify, request

from .errors import outcome_response
from .services import SERVICES

log = logging.getLogger("cds_service.feedback")
bp = Blueprint("feedback", __name__)

OUTCOMES = ("accepted", "overridden")
MAX_ENTRIES = 500


def _str(value, limit: int = 256) -> bool:
    return isinstance(value, str) and 0 < len(value.strip()) and len(value) <= limit


def _timestamp_problem(value) -> str | None:
    if not isinstance(value, str) or "T" not in value:
        return "must be an ISO 8601 date-time (UTC), e.g. 2025-12-31T15:00:00Z"
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return "must be an ISO 8601 date-time (UTC), e.g. 2025-12-31T15:00:00Z"
    return None


def problems(body) -> list[tuple[str, str]]:
    """(FHIRPath-like expression, message) for every problem of a feedback request body."""
    if not isinstance(body, dict):
        return [("feedback", "the request body must be a JSON object with a feedback array")]
    entries = body.get("feedback")
    if not isinstance(entries, list) or not entries:
        return [("feedback", "feedback is required: a non-empty array of Feedback objects")]
    if len(entries) > MAX_ENTRIES:
        return [("feedback", f"at most {MAX_ENTRIES} feedback entries per request")]
    out: list[tuple[str, str]] = []
    for i, e in enumerate(entries):
        at = f"feedback[{i}]"
        if not isinstance(e, dict):
            out.append((at, "must be a JSON object"))
            continue
        if not _str(e.get("card"), 128):
            out.append((f"{at}.card", "card is required: the uuid of the card acted on"))
        outcome = e.get("outcome")
        if outcome not in OUTCOMES:
            out.append((f"{at}.outcome", f"outcome is required: accepted or overridden, got {outcome!r}"))
        problem = _timestamp_problem(e.get("outcomeTimestamp"))
        if problem:
            out.append((f"{at}.outcomeTimestamp", f"outcomeTimestamp is required and {problem}"))
        accepted = e.get("acceptedSuggestions")
        if accepted is not None:
            if outcome == "overridden":
                out.append((f"{at}.acceptedSuggestions", "acceptedSuggestions is only for an accepted outcome"))
            elif not isinstance(accepted, list):
                out.append((f"{at}.acceptedSuggestions", "must be an array of {id} objects"))
            else:
                for j, s in enumerate(accepted):
                    if not (isinstance(s, dict) and _str(s.get("id"), 128)):
                        out.append((f"{at}.acceptedSuggestions[{j}].id", "id is required (the suggestion's uuid)"))
        reason = e.get("overrideReason")
        if reason is not None:
            if outcome == "accepted":
                out.append((f"{at}.overrideReason", "overrideReason is only for an overridden outcome"))
            elif not isinstance(reason, dict):
                out.append((f"{at}.overrideReason", "must be an object with reason (Coding) and/or userComment"))
            else:
                coding = reason.get("reason")
                if coding is not None:
                    if not isinstance(coding, dict) or not _str(coding.get("code"), 128):
                        out.append((f"{at}.overrideReason.reason", "must be a Coding with a code"))
                    else:
                        for k in ("system", "display"):
                            if k in coding and not _str(coding[k], 256):
                                out.append((f"{at}.overrideReason.reason.{k}", f"{k} must be a non-empty string"))
                if "userComment" in reason and not isinstance(reason["userComment"], str):
                    out.append((f"{at}.overrideReason.userComment", "userComment must be a string"))
    return out


def _invalid(found: list[tuple[str, str]]):
    response = outcome_response(400, found[0][1], "invalid", found[0][0])
    body = response.get_json()
    body["issue"] = [
        {"severity": "error", "code": "invalid", "diagnostics": msg, "expression": [where]} for where, msg in found[:50]
    ]
    response.set_data(json.dumps(body))
    return response


@bp.post("/cds-services/<service_id>/feedback")
def receive(service_id: str):
    if service_id not in SERVICES:
        return outcome_response(404, f"no CDS service '{service_id}'; see GET /cds-services", "not-found")
    try:
        body = json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError) as exc:
        return outcome_response(400, f"request body is not valid JSON: {exc}", "structure")
    found = problems(body)
    if found:
        log.info("refused feedback for service=%s: %d problems", service_id, len(found))
        return _invalid(found)
    client = g.get("cds_client")
    tenant = g.get("cds_tenant") or (getattr(client, "tenant", None) if client else None)
    ids = current_app.extensions["cds_decisions"].record_feedback(
        service_id, body["feedback"], client=getattr(client, "iss", None) if client else None, tenant=tenant,
        received_at=current_app.config["CLOCK"](),
    )
    log.info("feedback service=%s entries=%d outcomes=%s", service_id, len(ids),
             ",".join(e["outcome"] for e in body["feedback"]))
    return jsonify({}), 200
