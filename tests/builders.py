"""Small builders for CP.MP.190 order-sign requests and the FHIR resources in them.

Everything defaults to an ordinary adult Centene member (payer identifier
``http://example.org/payer-id|centene``, active Coverage) ordering a stationary
concentrator on T0 = 2025-06-01, with every prefetch key of contract §4.1 present
(empty Bundles where there is nothing).  Tests override only what they exercise::

    req = request(observations=[spo2(88, T0)], questionnaire_answers={"I.E": True})

Observations default to the requester as performer and to the ambulatory visit
encounter ``Encounter/enc-visit`` (class AMB, in progress, so never a "finished"
physician evaluation for re-authorization windows) which ``request`` always adds.
"""
from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Iterable, Mapping

T0 = date(2025, 6, 1)
PATIENT_ID = "pt-b"
PATIENT = f"Patient/{PATIENT_ID}"
PRACTITIONER_ID = "pr-doc"
PRACTITIONER = f"Practitioner/{PRACTITIONER_ID}"
VISIT_ID = "enc-visit"
VISIT = f"Encounter/{VISIT_ID}"
COVERAGE_ID = "cov-b"
ORDER_ID = "dr-order"
PREFIX = "CP.MP.190-2023"

BASE = "http://example.org/fhir/cds-coverage"
PAYER_SYSTEM = "http://example.org/payer-id"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
NUCC = "http://nucc.org/provider-taxonomy"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
VS = "http://hl7.org/fhir/us/vitals/StructureDefinition/"
OXIMETRY_SUMMARY = f"{BASE}/CodeSystem/oximetry-summary"
PERFORMER_CLASS = f"{BASE}/CodeSystem/performer-class"

# §5.3: the vitals extension carrying each context.
_CONTEXT_EXT = {
    "REST": (VS + "ExerciseAssociationExt", "263678003"),
    "EXERCISE": (VS + "ExerciseAssociationExt", "309604004"),
    "SLEEP": (VS + "SleepStatusExt", "248220008"),
    # 255214003 "after exercise": EXERCISE only in the same session as a during-exercise value (INT-11).
    "AFTER_EXERCISE": (VS + "ExerciseAssociationExt", "255214003"),
}
_O2_FLOW = {"room": 0, "on": 2}
_COMPONENT_UNITS = {"percent-time-spo2-lt-92": "%", "baseline-awake-spo2": "%"}

_ids = itertools.count(1)


def _next_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


# -- dates ---------------------------------------------------------------------
def before(days: int, anchor: date = T0) -> str:
    """The ISO date ``days`` calendar days before ``anchor`` (T0 by default)."""
    return (anchor - timedelta(days=days)).isoformat()


def after(days: int, anchor: date = T0) -> str:
    return (anchor + timedelta(days=days)).isoformat()


def _iso(d: date | str) -> str:
    return d.isoformat() if isinstance(d, date) else d


def _instant(d: date | str, at: str) -> str:
    """A dateTime on the given date at local time ``at`` (a full dateTime passes through)."""
    text = _iso(d)
    return text if "T" in text else f"{text}T{at}:00-05:00"


def ref(resource_or_ref: Mapping | str) -> dict:
    if isinstance(resource_or_ref, Mapping):
        return {"reference": f"{resource_or_ref['resourceType']}/{resource_or_ref['id']}"}
    return {"reference": resource_or_ref}


# -- concepts ----------------------------------------------------------------------
def coding(system: str, code: str, display: str | None = None) -> dict:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def concept(system: str, code: str, display: str | None = None) -> dict:
    return {"coding": [coding(system, code, display)]}


def qty(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


# -- observations --------------------------------------------------------------------
def _observation(
    codes: list[tuple[str, str]],
    value: float,
    unit: str,
    when: date | str,
    *,
    id: str | None,
    at: str,
    period_end: date | str | None,
    performer: str | None,
    encounter: str | None,
    status: str,
) -> dict:
    obs: dict = {
        "resourceType": "Observation",
        "id": id or _next_id("obs"),
        "status": status,
        "code": {"coding": [coding(s, c) for s, c in codes]},
        "subject": {"reference": PATIENT},
        "valueQuantity": qty(value, unit),
    }
    if period_end is not None:
        obs["effectivePeriod"] = {"start": _instant(when, at), "end": _instant(period_end, "06:00")}
    else:
        obs["effectiveDateTime"] = _instant(when, at)
    if performer:
        obs["performer"] = [{"reference": performer}]
    if encounter:
        obs["encounter"] = {"reference": encounter}
    return obs


def _add_context(obs: dict, context: str | None) -> None:
    if context is None:
        return
    url, code = _CONTEXT_EXT[context]
    obs.setdefault("extension", []).append({"url": url, "valueCodeableConcept": concept(SNOMED, code)})


def _add_o2(obs: dict, o2: str | None) -> None:
    if o2 is None:
        return
    flow = _O2_FLOW[o2]
    obs.setdefault("component", []).append({"code": concept(LOINC, "3151-8"), "valueQuantity": qty(flow, "L/min")})


def _add_summary(obs: dict, components: Mapping[str, float] | None) -> None:
    for code, value in (components or {}).items():
        obs.setdefault("component", []).append({
            "code": concept(OXIMETRY_SUMMARY, code),
            "valueQuantity": qty(value, _COMPONENT_UNITS.get(code, "min")),
        })


def spo2(
    value: float,
    date: date | str,
    context: str | None = "REST",
    o2: str | None = "room",
    *,
    id: str | None = None,
    at: str = "09:00",
    code: str = "59408-5",
    unit: str = "%",
    performer: str | None = PRACTITIONER,
    encounter: str | None = VISIT,
    components: Mapping[str, float] | None = None,
    period_end: date | str | None = None,
    part_of: str | None = None,
    status: str = "final",
) -> dict:
    """An SpO2 Observation (§12 shape): context via the vitals extensions, O2 via 3151-8.

    ``context``: "REST" | "EXERCISE" | "SLEEP" | "AFTER_EXERCISE" | None (no extension);
    ``o2``: "room" (3151-8 = 0 L/min) | "on" (2 L/min) | None (not recorded);
    ``components``: overnight oximetry summary values (§5.6), e.g. ``{"minutes-spo2-le-88": 5.0}``.
    """
    codes = [(LOINC, code)] + ([(LOINC, "2708-6")] if code == "59408-5" else [])
    obs = _observation(codes, value, unit, date, id=id, at=at, period_end=period_end,
                       performer=performer, encounter=encounter, status=status)
    _add_context(obs, context)
    _add_o2(obs, o2)
    _add_summary(obs, components)
    if part_of:
        obs["partOf"] = [{"reference": part_of}]
    return obs


def oximetry(
    nadir: float,
    night_of: date | str,
    components: Mapping[str, float] | None = None,
    **kw,
) -> dict:
    """An overnight oximetry summary (§5.6): SLEEP context, room air, a recording period."""
    start = night_of if isinstance(night_of, date) else date.fromisoformat(night_of)
    kw.setdefault("at", "22:10")
    return spo2(nadir, start, "SLEEP", kw.pop("o2", "room"), components=components,
                period_end=start + timedelta(days=1), **kw)


def pao2(
    value: float,
    date: date | str,
    unit: str = "mm[Hg]",
    context: str | None = "REST",
    o2: str | None = "room",
    *,
    id: str | None = None,
    at: str = "09:00",
    performer: str | None = PRACTITIONER,
    encounter: str | None = VISIT,
    status: str = "final",
) -> dict:
    """An arterial PO2 Observation (LOINC 2703-7) in mm[Hg] or kPa."""
    obs = _observation([(LOINC, "2703-7")], value, unit, date, id=id, at=at, period_end=None,
                       performer=performer, encounter=encounter, status=status)
    _add_context(obs, context)
    _add_o2(obs, o2)
    return obs


def hematocrit(value: float, date: date | str, unit: str = "%", *, id: str | None = None,
               code: str = "4544-3", at: str = "08:00") -> dict:
    return _observation([(LOINC, code)], value, unit, date, id=id, at=at, period_end=None,
                        performer=None, encounter=None, status="final")


# -- conditions, encounters, performers ------------------------------------------------
def condition(
    icd10: str,
    onset: date | str | None = "2015-01-01",
    clinical_status: str | None = "active",
    *,
    id: str | None = None,
    abatement: date | str | None = None,
    verification: str = "confirmed",
) -> dict:
    cond: dict = {
        "resourceType": "Condition",
        "id": id or _next_id("cond"),
        "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification),
        "code": concept(ICD10, icd10),
        "subject": {"reference": PATIENT},
    }
    if clinical_status:
        cond["clinicalStatus"] = concept("http://terminology.hl7.org/CodeSystem/condition-clinical", clinical_status)
    if onset is not None:
        cond["onsetDateTime"] = _iso(onset)
    if abatement is not None:
        cond["abatementDateTime"] = _iso(abatement)
    return cond


def encounter(
    id: str,
    klass: str = "AMB",
    start: date | str = T0,
    end: date | str | None = None,
    participant: str | None = PRACTITIONER,
    *,
    status: str = "finished",
    service_provider: str | None = None,
) -> dict:
    enc: dict = {
        "resourceType": "Encounter",
        "id": id,
        "status": status,
        "class": coding(ACT, klass),
        "subject": {"reference": PATIENT},
        "period": {"start": _instant(start, "08:00")},
    }
    if end is not None:
        enc["period"]["end"] = _instant(end, "17:00")
    if participant:
        enc["participant"] = [{"individual": {"reference": participant}}]
    if service_provider:
        enc["serviceProvider"] = {"reference": service_provider}
    return enc


def organization(id: str, nucc: str | None = None, idtf: bool = False, *, name: str | None = None) -> dict:
    """An Organization: ``nucc`` puts a provider taxonomy in ``type`` (332B00000X = DME supplier)."""
    types = []
    if nucc:
        types.append(concept(NUCC, nucc))
    if idtf:
        types.append(concept(PERFORMER_CLASS, "idtf"))
    org: dict = {"resourceType": "Organization", "id": id, "name": name or id}
    if types:
        org["type"] = types
    return org


def practitioner(id: str = PRACTITIONER_ID) -> dict:
    return {
        "resourceType": "Practitioner",
        "id": id,
        "name": [{"family": "Doe", "given": ["Pat"]}],
        "qualification": [{"code": concept("http://terminology.hl7.org/CodeSystem/v2-0360", "MD")}],
    }


def procedure(id: str, cpt: str, performed: date | str, status: str = "completed") -> dict:
    return {
        "resourceType": "Procedure",
        "id": id,
        "status": status,
        "code": concept(CPT, cpt),
        "subject": {"reference": PATIENT},
        "performedDateTime": _iso(performed),
    }


def device_request(id: str, code: str = "E1390", authored: date | str = "2025-03-01",
                   status: str = "active") -> dict:
    """A (prior) DeviceRequest, e.g. the initial oxygen order a re-authorization refers to."""
    return {
        "resourceType": "DeviceRequest",
        "id": id,
        "status": status,
        "intent": "order",
        "codeCodeableConcept": concept(HCPCS, code),
        "subject": {"reference": PATIENT},
        "authoredOn": _iso(authored),
        "requester": {"reference": PRACTITIONER},
    }


def questionnaire_response(answers: Mapping[str, object], authored: date | str = T0, *,
                           id: str | None = None, status: str = "completed",
                           prefix: str = PREFIX) -> dict:
    """One QuestionnaireResponse; keys are criterion IDs without the revision prefix.

    Values map to answer types by Python type: bool → valueBoolean, int → valueInteger,
    float → valueDecimal, ``date`` → valueDate; a dict is used as the answer as is.
    """
    items = []
    for link, value in answers.items():
        items.append({"linkId": link if "/" in link else f"{prefix}/{link}", "answer": [_answer(value)]})
    return {
        "resourceType": "QuestionnaireResponse",
        "id": id or _next_id("qr"),
        "questionnaire": f"{BASE}/Questionnaire/{prefix}",
        "status": status,
        "subject": {"reference": PATIENT},
        "authored": _instant(authored, "10:00"),
        "item": items,
    }


def _answer(value: object) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, int):
        return {"valueInteger": value}
    if isinstance(value, float):
        return {"valueDecimal": value}
    if isinstance(value, date):
        return {"valueDate": value.isoformat()}
    raise TypeError(f"no answer type for {value!r}")


# -- the request ---------------------------------------------------------------------
def bundle(resources: Iterable[Mapping]) -> dict:
    entries = [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": dict(r)}
               for r in resources]
    out: dict = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    if entries:
        out["entry"] = entries
    return out


def patient(birth_date: str | None = "1960-01-01") -> dict:
    pat: dict = {"resourceType": "Patient", "id": PATIENT_ID, "name": [{"family": "Member", "given": ["Test"]}],
                 "gender": "female"}
    if birth_date is not None:
        pat["birthDate"] = birth_date
    return pat


def coverage(payer: str = "centene", status: str = "active") -> dict:
    return {
        "resourceType": "Coverage",
        "id": COVERAGE_ID,
        "status": status,
        "beneficiary": {"reference": PATIENT},
        "payor": [{"identifier": {"system": PAYER_SYSTEM, "value": payer}}],
    }


def order(
    code: str = "E1390",
    authored: date | str | None = T0,
    *,
    id: str = ORDER_ID,
    reason_codes: Iterable[str] = ("J44.9",),
    prior_request: str | Mapping | None = None,
) -> dict:
    dr: dict = {
        "resourceType": "DeviceRequest",
        "id": id,
        "status": "draft",
        "intent": "original-order",
        "codeCodeableConcept": concept(HCPCS, code),
        "subject": {"reference": PATIENT},
        "requester": {"reference": PRACTITIONER},
        "insurance": [{"reference": f"Coverage/{COVERAGE_ID}"}],
    }
    if authored is not None:
        dr["authoredOn"] = _iso(authored)
    reasons = list(reason_codes)
    if reasons:
        dr["reasonCode"] = [concept(ICD10, c) for c in reasons]
    if prior_request is not None:
        dr["priorRequest"] = [ref(prior_request)]
    return dr


def request(
    order_code: str = "E1390",
    authored: date | str | None = T0,
    birth_date: str | None = "1960-01-01",
    observations: Iterable[Mapping] = (),
    conditions: Iterable[Mapping] = (),
    encounters: Iterable[Mapping] = (),
    questionnaire_answers: Mapping[str, object] | None = None,
    procedures: Iterable[Mapping] = (),
    organizations: Iterable[Mapping] = (),
    prior_request: str | Mapping | None = None,
    reason_codes: Iterable[str] = ("J44.9",),
    extra_prefetch: Mapping[str, object] | None = None,
    *,
    qr_authored: date | str | None = None,
    questionnaire_responses: Iterable[Mapping] = (),
    device_requests: Iterable[Mapping] = (),
    payer: str = "centene",
    hook_instance: str = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
) -> dict:
    """A complete order-sign request for one DeviceRequest under CP.MP.190.

    ``questionnaire_answers`` become one completed QuestionnaireResponse authored on
    ``qr_authored`` (default: the order date); pass ``questionnaire_responses`` for more.
    ``prior_request``: a DeviceRequest (added to the ``deviceRequests`` prefetch) or a
    reference string (left unresolved unless the resource is given elsewhere).
    ``organizations`` are included beside the observations, as a ``_include`` would.
    """
    the_order = order(order_code, authored, reason_codes=reason_codes, prior_request=prior_request)
    t0 = authored if authored is not None else T0
    qrs = list(questionnaire_responses)
    if questionnaire_answers:
        qrs.insert(0, questionnaire_response(questionnaire_answers, qr_authored or t0))
    prior = [prior_request] if isinstance(prior_request, Mapping) else []
    visit = encounter(VISIT_ID, "AMB", t0, None, PRACTITIONER, status="in-progress")
    prefetch: dict = {
        "patient": patient(birth_date),
        "coverage": bundle([coverage(payer)]),
        "observations": bundle(list(observations) + list(organizations) + [practitioner()]),
        "questionnaireResponses": bundle(qrs),
        "conditions": bundle(conditions),
        "encounters": bundle([visit] + list(encounters)),
        "procedures": bundle(procedures),
        "medicationRequests": bundle([]),
        "allergies": bundle([]),
        "devices": bundle([]),
        "deviceRequests": bundle(prior + list(device_requests)),
        "diagnosticReports": bundle([]),
    }
    prefetch.update(extra_prefetch or {})
    return {
        "hookInstance": hook_instance,
        "hook": "order-sign",
        "context": {
            "userId": PRACTITIONER,
            "patientId": PATIENT_ID,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": the_order}]},
        },
        "prefetch": prefetch,
    }


# -- reading the response ----------------------------------------------------------------
CI_URL = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"


def evaluation(body: Mapping, index: int = 0) -> dict:
    """The card's machine-readable evaluation (``extension["cds-coverage.evaluation"]``)."""
    return body["cards"][index]["extension"]["cds-coverage.evaluation"]


def criteria(body: Mapping, index: int = 0) -> dict[str, dict]:
    """Evaluated criteria by short ID (``I.B.1.a``), each {id, value, evidence, resolution?}."""
    return {c["id"].split("/", 1)[1] if "/" in c["id"] else c["id"]: c for c in evaluation(body, index)["criteria"]}


def value_of(body: Mapping, short_id: str, index: int = 0) -> str | None:
    """A criterion's value, or None when it was not evaluated (omitted)."""
    c = criteria(body, index).get(short_id)
    return c["value"] if c else None


def deciding(body: Mapping, index: int = 0) -> list[str]:
    return [d.split("/", 1)[1] if "/" in d else d for d in evaluation(body, index)["deciding"]]


def coverage_information(body: Mapping, index: int = 0) -> dict[str, object]:
    """The systemAction's coverage-information sub-extensions as {url: value}."""
    resource = body["systemActions"][index]["resource"]
    exts = [e for e in resource.get("extension") or [] if e.get("url") == CI_URL]
    assert len(exts) == 1, f"expected one coverage-information extension, got {len(exts)}"
    out: dict[str, object] = {}
    for sub in exts[0]["extension"]:
        val = next(v for k, v in sub.items() if k.startswith("value"))
        out[sub["url"]] = val
    return out
