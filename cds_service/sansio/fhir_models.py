"""Typed validation of the few resources the evaluation relies on most: the draft orders.

Only what the evaluation reads is validated (issue 8: full validation of every
prefetched resource would cost tens of milliseconds per hundred resources);
prefetch resources stay plain data and malformed ones are ignored by extraction.
Models come from ``fhir.resources`` (its R4B package, the closest to R4 it ships).
"""
from __future__ import annotations

from importlib import import_module
from typing import Mapping

from pydantic import ValidationError

_MODULES = {
    "DeviceRequest": "devicerequest",
    "ServiceRequest": "servicerequest",
    "MedicationRequest": "medicationrequest",
}
# The elements the evaluation reads, per order type; the others are passed through untouched.
READ = {
    "DeviceRequest": ("codeCodeableConcept", "authoredOn", "insurance", "reasonCode", "reasonReference",
                      "priorRequest", "parameter", "requester", "subject", "occurrenceTiming"),
    "ServiceRequest": ("code", "authoredOn", "insurance", "reasonCode", "reasonReference", "requester", "subject"),
    "MedicationRequest": ("medicationCodeableConcept", "authoredOn", "insurance", "reasonCode", "reasonReference",
                          "requester", "subject"),
}
# Stand-ins for required elements the evaluation does not read (real EHRs omit some in drafts).
_FILL = {
    "status": "draft",
    "intent": "order",
    "subject": {"reference": "Patient/unread"},
    "codeCodeableConcept": {"text": "unread"},
    "code": {"text": "unread"},
    "medicationCodeableConcept": {"text": "unread"},
}
_REQUIRED = {
    "DeviceRequest": ("status", "intent", "subject", "codeCodeableConcept"),
    "ServiceRequest": ("status", "intent", "subject"),
    "MedicationRequest": ("status", "intent", "subject", "medicationCodeableConcept"),
}
_cache: dict[str, type] = {}


def _model(rtype: str):
    if rtype not in _cache:
        module = import_module(f"fhir.resources.R4B.{_MODULES[rtype]}")
        _cache[rtype] = getattr(module, rtype)
    return _cache[rtype]


def order_problem(resource: Mapping) -> tuple[str, str] | None:
    """(element path, message) of the first structural problem of a draft order, or None."""
    rtype = resource.get("resourceType")
    if rtype not in _MODULES:
        return None
    subset = {"resourceType": rtype}
    subset.update({k: resource[k] for k in READ[rtype] if k in resource and resource[k] is not None})
    for key in _REQUIRED[rtype]:
        if key not in subset:
            if rtype == "DeviceRequest" and key == "codeCodeableConcept" and "codeReference" in resource:
                continue
            subset[key] = _FILL[key]
    if rtype == "DeviceRequest" and "codeCodeableConcept" not in subset:
        subset["codeReference"] = {"reference": "Device/unread"}
    try:
        _model(rtype).model_validate(subset)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        return path, err.get("msg", "invalid")
    return None


def warm_models() -> None:
    for rtype in _MODULES:
        _model(rtype)
