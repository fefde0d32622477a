"""Hook requests for order-dispatch, appointment-book and the encounter hooks, made from order-sign ones.

The order-sign examples (fhir_examples/*) and builders' requests document the determination of
each draft order.  These helpers turn one into the later workflow steps of the same orders: the
draft orders become signed orders in the patient's record (prefetch ``deviceRequests``,
``medicationRequests`` and ``serviceRequests``, status ``active``), and the new hook's context
references one of them by id — dispatched to a performer, or booked as an appointment — or
names the encounter the patient is in.  Nothing else changes, so the determination must not.
"""
from __future__ import annotations

import copy
import uuid
from typing import Mapping

RECORD_KEYS = {"DeviceRequest": "deviceRequests", "MedicationRequest": "medicationRequests",
               "ServiceRequest": "serviceRequests"}
PERFORMER = "Organization/supplier-1"
CI_URL = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"
ALTERNATE_REFERENCE = "http://hl7.org/fhir/StructureDefinition/alternate-reference"
CRD_22 = {"davinci-crd.requestedVersion": "2.2"}


def drafts(body: Mapping) -> list[dict]:
    return [e["resource"] for e in body["context"]["draftOrders"]["entry"]]


def signed(body: Mapping, status: str = "active") -> dict:
    """The order-sign request with its draft orders moved into the patient's record (prefetch)."""
    out = copy.deepcopy(body)
    out["hookInstance"] = str(uuid.uuid4())
    orders = [e["resource"] for e in out["context"].pop("draftOrders")["entry"]]
    prefetch = out.setdefault("prefetch", {})
    for res in orders:
        res["status"] = status
        key = RECORD_KEYS[res["resourceType"]]
        bundle = prefetch.get(key)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            bundle = prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        bundle.setdefault("entry", []).append({"resource": res})
    return out


def dispatch(body: Mapping, *refs: str, shape: str = "1.1", performer: str | None = PERFORMER) -> dict:
    """order-dispatch of ``refs`` in one of the three context shapes: "1.0", "interim", "1.1"."""
    out = signed(body)
    out["hook"] = "order-dispatch"
    context = out["context"]
    context.pop("userId", None)
    context.pop("encounterId", None)
    tasks = [task(ref, context["patientId"], performer) for ref in refs]
    if shape == "1.0":
        (ref,) = refs
        context["order"] = ref
        context["task"] = tasks[0]
    elif shape == "interim":
        context["dispatched-orders"] = list(refs)
        context["fulfillment-tasks"] = tasks
    else:
        context["dispatchedOrders"] = list(refs)
        context["fulfillmentTasks"] = tasks
    if performer is not None:
        context["performer"] = performer
    return out


def task(ref: str, patient_id: str, performer: str | None) -> dict:
    out = {"resourceType": "Task", "id": f"task-{ref.split('/')[-1]}", "status": "requested", "intent": "order",
           "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
           "focus": {"reference": ref}, "for": {"reference": f"Patient/{patient_id}"}}
    if performer:
        out["owner"] = {"reference": performer}
    return out


def appointment(id: str, patient_id: str, based_on: list | None = None, **fields) -> dict:
    out = {"resourceType": "Appointment", "id": id, "status": "proposed",
           "start": "2026-01-15T09:00:00Z", "end": "2026-01-15T11:00:00Z", "created": "2025-12-30",
           "participant": [{"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
                           {"actor": {"reference": "Practitioner/pr-surgeon"}, "status": "accepted",
                            "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                                  "code": "PPRF"}]}]}]}
    if based_on:
        out["basedOn"] = [b if isinstance(b, dict) else {"reference": b} for b in based_on]
    out.update(fields)
    return out


def book(body: Mapping, *appointments: dict, dialect: str = "2.0.1") -> dict:
    """appointment-book of the given Appointments, the draft orders signed into the record."""
    out = signed(body)
    out["hook"] = "appointment-book"
    out["context"]["appointments"] = {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": a} for a in appointments]}
    if dialect == "2.2":
        out["extension"] = dict(CRD_22)
    return out


def book_order(body: Mapping, ref: str, dialect: str = "2.0.1") -> dict:
    return book(body, appointment("apt-1", body["context"]["patientId"], [ref]), dialect=dialect)


def encounter_hook(body: Mapping, hook: str, encounter_id: str) -> dict:
    out = signed(body)
    out["hook"] = hook
    out["context"]["encounterId"] = encounter_id
    return out


# -- reading responses -----------------------------------------------------------------------------
def evaluations(payload: Mapping) -> dict[str, dict]:
    """Card evaluation by the evaluated order."""
    return {c["extension"]["cds-coverage.evaluation"]["order"]: c["extension"]["cds-coverage.evaluation"]
            for c in payload["cards"]}


def card_for(payload: Mapping, ref: str) -> dict:
    (card,) = [c for c in payload["cards"] if c["extension"]["cds-coverage.evaluation"]["order"] == ref]
    return card


def associated(card: Mapping) -> list[str]:
    return [r["reference"] for r in card["extension"]["davinci-crd.associated-resource"]]


def coverage_values(action: Mapping) -> dict[str, list]:
    (ext,) = [e for e in action["resource"]["extension"] if e["url"] == CI_URL]
    out: dict[str, list] = {}
    for sub in ext["extension"]:
        out.setdefault(sub["url"], []).append(next(v for k, v in sub.items() if k.startswith("value")))
    return out


def without_coverage_information(resource: Mapping) -> dict:
    out = copy.deepcopy(dict(resource))
    out["extension"] = [e for e in out.get("extension") or [] if e.get("url") != CI_URL]
    if not out["extension"]:
        del out["extension"]
    return out


def outcome(evaluation: Mapping) -> tuple:
    return (evaluation["determination"], tuple(evaluation["deciding"]), tuple(sorted(evaluation["advisories"])),
            evaluation["revision"], evaluation["t0"])
