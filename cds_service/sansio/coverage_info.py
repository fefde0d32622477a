"""The CRD coverage-information extension and its systemAction (contract §10.2, §10.3)."""
from __future__ import annotations

import copy
import hashlib
from datetime import date

from .engine import INSUFFICIENT_DOCUMENTATION, NOT_APPLICABLE, NOT_MEDICALLY_NECESSARY, SUPPORTED

EXT_URL = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
CRD_TEMP = "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"
DIALECT_2_0_1 = "2.0.1"
DIALECT_2_2 = "2.2"
NOT_APPLICABLE_REASON = "No payer policy on file governs this order"
TECHNICAL = "TECHNICAL_FAILURE"


def assertion_id(order_ref: str, coverage_ref: str, revision: str, determination: str) -> str:
    """Stable for the same order, coverage, policy revision and determination."""
    text = "|".join((order_ref, coverage_ref, revision, determination))
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()  # ids as sent, even malformed
    return f"crd-{digest[:32]}"


def coverage_information(
    *,
    determination: str,
    coverage_ref: str,
    order_ref: str,
    revision: str,
    today: date,
    dialect: str,
    pa_needed: str,
    reason: str | None,
    questionnaire: str | None = None,
    hook: str = "order-sign",
) -> dict:
    subs: list[dict] = [{"url": "coverage", "valueReference": {"reference": coverage_ref}}]

    def add(url: str, **value) -> None:
        subs.append({"url": url, **value})

    on_select = hook == "order-select"
    if determination == SUPPORTED:
        add("covered", valueCode="covered")
        add("pa-needed", valueCode=pa_needed)
    elif determination == NOT_MEDICALLY_NECESSARY:
        add("covered", valueCode="not-covered")
        add("reason", valueCodeableConcept={"text": reason})
    elif determination == INSUFFICIENT_DOCUMENTATION:
        add("covered", valueCode="conditional")
        add("pa-needed", valueCode=pa_needed)
        if not on_select:
            add("doc-needed", valueCode="clinical")
        add("info-needed", valueCode="OTH")
        add("reason", valueCodeableConcept={"text": reason})
        if questionnaire and not on_select:
            add("questionnaire", valueCanonical=questionnaire)
    elif determination == NOT_APPLICABLE:
        if dialect == DIALECT_2_2:
            add("covered", valueCode="indeterminate")
        else:
            add("covered", valueCode="conditional")
            add("pa-needed", valueCode="conditional")
            add("info-needed", valueCode="OTH")
        add("reason", valueCodeableConcept={"text": reason or NOT_APPLICABLE_REASON})
    elif determination == TECHNICAL:
        if dialect == DIALECT_2_2:
            add("covered", valueCode="indeterminate")
            add("reason", valueCodeableConcept={
                "coding": [{"system": CRD_TEMP, "code": "technical", "display": "Technical issue"}], "text": reason})
        else:
            add("covered", valueCode="conditional")
            add("pa-needed", valueCode="conditional")
            add("info-needed", valueCode="OTH")
            add("reason", valueCodeableConcept={"text": reason})
    else:
        raise ValueError(f"unknown determination {determination}")
    add("date", valueDate=today.isoformat())
    add("coverage-assertion-id", valueString=assertion_id(order_ref, coverage_ref, revision, determination))
    return {"url": EXT_URL, "extension": subs}


def annotate(order: dict, extension: dict) -> dict:
    """The order unchanged except for one coverage-information per Coverage (replacing earlier)."""
    resource = copy.deepcopy(order)
    coverage = extension["extension"][0]["valueReference"]["reference"]
    kept = []
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == EXT_URL:
            refs = [s.get("valueReference", {}).get("reference") for s in ext.get("extension") or [] if isinstance(s, dict) and s.get("url") == "coverage"]
            if coverage in refs:
                continue
        kept.append(ext)
    resource["extension"] = kept + [extension]
    return resource


def system_action(order: dict, extension: dict, description: str) -> dict:
    return {"type": "update", "description": description, "resource": annotate(order, extension)}
