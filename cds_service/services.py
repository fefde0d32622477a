"""The CDS services this product offers and their discovery entries (CDS Hooks §Discovery)."""
from __future__ import annotations

from .sansio.evidence import HCT_CODES, P_WAVE_CODES, PAIN_CODES, PAO2_CODES, RVSP_CODES, SAT_CODES, SAT_SNOMED_NADIR
from .sansio.hook import CONFIGURATION_OPTIONS

P = "{{context.patientId}}"


def observation_codes(base: str) -> str:
    loinc = sorted(SAT_CODES) + sorted(PAO2_CODES) + sorted(HCT_CODES) + sorted(PAIN_CODES) + sorted(RVSP_CODES)
    codes = [f"http://loinc.org|{c}" for c in loinc]
    codes.append(f"http://snomed.info/sct|{SAT_SNOMED_NADIR}")
    codes += [f"{base}/CodeSystem/ecg-measure|{c}" for c in sorted(P_WAVE_CODES)]
    return ",".join(codes)


def prefetch_templates(base: str, hook: str = "order-sign") -> dict[str, str]:
    """Contract §4.1: root-level tokens only.

    order-dispatch and appointment-book reference their orders by id: ``serviceRequests`` (the
    patient's open ServiceRequests) lets a client send them, as ``deviceRequests`` and
    ``medicationRequests`` already do for the other order types; what is not sent is read.
    """
    templates = {
        "patient": f"Patient/{P}",
        "coverage": f"Coverage?patient={P}&status=active",
        "observations": f"Observation?patient={P}&code={observation_codes(base)}",
        "questionnaireResponses": f"QuestionnaireResponse?subject=Patient/{P}&status=completed,amended",
        "conditions": f"Condition?patient={P}",
        "encounters": f"Encounter?patient={P}",
        "procedures": f"Procedure?patient={P}",
        "medicationRequests": f"MedicationRequest?patient={P}",
        "allergies": f"AllergyIntolerance?patient={P}",
        "devices": f"Device?patient={P}",
        "deviceRequests": f"DeviceRequest?patient={P}",
        "diagnosticReports": f"DiagnosticReport?patient={P}",
    }
    if hook in ("order-dispatch", "appointment-book"):
        templates["serviceRequests"] = f"ServiceRequest?patient={P}&status=draft,active,on-hold"
    return templates


SERVICES = {
    "order-sign-crd": {
        "hook": "order-sign",
        "title": "Coverage requirements at order signing",
        "description": (
            "Da Vinci CRD: evaluates each draft order (home oxygen, intrathecal/epidural pain pumps, cosmetic and "
            "reconstructive procedures) against the payer's medical-necessity policy and returns a card and a "
            "coverage-information update per order."
        ),
    },
    "order-select-crd": {
        "hook": "order-select",
        "title": "Coverage requirements at order selection",
        "description": (
            "Da Vinci CRD: early coverage guidance for the selected orders, with the same policy evaluation "
            "as order-sign."
        ),
    },
    "order-dispatch-crd": {
        "hook": "order-dispatch",
        "title": "Coverage requirements when an order is dispatched to a performer",
        "description": (
            "Da Vinci CRD: evaluates each dispatched order (hook 1.0 order/performer/task, or 1.1 "
            "dispatchedOrders/fulfillmentTasks) against the payer's policy, as at signing, and returns a card and "
            "a coverage-information update per order. Orders not sent in the prefetch are read from fhirServer."
        ),
    },
    "appointment-book-crd": {
        "hook": "appointment-book",
        "title": "Coverage requirements when an appointment is booked",
        "description": (
            "Da Vinci CRD: evaluates the procedure behind each booked Appointment (the ServiceRequest it is based "
            "on, or its CPT/HCPCS service type) and returns a card and a coverage-information update: on the "
            "Appointment (CRD 2.0.1), on the ServiceRequest (CRD 2.2)."
        ),
    },
    "encounter-start-crd": {
        "hook": "encounter-start",
        "title": "Coverage guidance at admission",
        "description": (
            "Da Vinci CRD (secondary hook): for an inpatient stay, tells when the patient's open home-oxygen order "
            "will need its qualifying test taken within two days before discharge. No determinations."
        ),
    },
    "encounter-discharge-crd": {
        "hook": "encounter-discharge",
        "title": "Coverage guidance at discharge",
        "description": (
            "Da Vinci CRD (secondary hook): at discharge from an inpatient stay, says when no oxygen test from the "
            "two days before discharge is on record for the patient's open home-oxygen order. No determinations."
        ),
    },
}


def discovery(base: str, crd_versions: list[str]) -> dict:
    services = []
    for sid, svc in SERVICES.items():
        services.append({
            "id": sid,
            "hook": svc["hook"],
            "title": svc["title"],
            "description": svc["description"],
            "prefetch": prefetch_templates(base, svc["hook"]),
            "usageRequirements": (
                "Send the prefetch keys, or fhirServer with fhirAuthorization so the service can query. "
                "Coverage.payor must carry an identifier the payer registry knows."
            ),
            "extension": {
                "davinci-crd.version": list(crd_versions),
                "davinci-crd.configuration-options": CONFIGURATION_OPTIONS,
            },
        })
    return {"services": services}
