"""Each policy revision's Questionnaire (contract §9.4), served as FHIR R4 JSON.

The canonical is ``{base}/Questionnaire/{prefix}``; this endpoint lets an EHR
or DTR client fetch it from the service itself.
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from .errors import outcome_response

bp = Blueprint("questionnaires", __name__)

_TYPES = {"boolean": "boolean", "integer": "integer", "decimal": "decimal", "date": "date"}


def questionnaire(policy, base: str) -> dict:
    return {
        "resourceType": "Questionnaire",
        "id": policy.prefix,
        "url": f"{base}/Questionnaire/{policy.prefix}",
        "name": policy.prefix.replace(".", "").replace("-", ""),
        "title": f"{policy.display} {policy.title}: attestations",
        "status": "active",
        "subjectType": ["Patient"],
        "item": [
            {"linkId": item.link_id, "text": item.text, "type": _TYPES[item.type],
             **({"code": [{"system": f"{base}/CodeSystem/freshness", "code": item.freshness}]} if item.freshness == "ANY" else {})}
            for item in policy.items.values()
        ],
    }


@bp.get("/fhir/Questionnaire/<prefix>")
def get_questionnaire(prefix: str):
    policy = current_app.extensions["cds_library"].by_prefix(prefix)
    if policy is None:
        return outcome_response(404, f"no Questionnaire for policy revision '{prefix}'", "not-found")
    return jsonify(questionnaire(policy, current_app.config["CODE_SYSTEM_BASE"]))


@bp.get("/fhir/Questionnaire")
def search_questionnaires():
    """FHIR search by ``url`` (canonical, optionally ``|version``); no parameter lists them all."""
    base = current_app.config["CODE_SYSTEM_BASE"]
    library = current_app.extensions["cds_library"]
    url = request.args.get("url")
    policies = library.policies
    if url is not None:
        canonical = url.split("|", 1)[0]
        policies = [p for p in policies if f"{base}/Questionnaire/{p.prefix}" == canonical]
    entries = [{"fullUrl": f"{base}/Questionnaire/{p.prefix}", "resource": questionnaire(p, base), "search": {"mode": "match"}}
               for p in policies]
    return jsonify({"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})
