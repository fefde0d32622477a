"""CP.MP.173 rev 01/24 (implantable intrathecal or epidural pain pump) boundaries, end to end.

Each test builds an order-sign request with the small builders below, posts it to
``/cds-services/order-sign-crd`` and reads the card's ``cds-coverage.evaluation``.
T0 = 2025-06-01; the trial is on 2025-05-01 at 10:00.  Contract sections are cited as
§n, rulings as INT-nn / A-nn.
"""
from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Iterable, Mapping

import pytest

PREFIX = "CP.MP.173-2024"
T0 = date(2025, 6, 1)
TRIAL_DAY = date(2025, 5, 1)
PATIENT_ID = "pt-pump"
PATIENT = f"Patient/{PATIENT_ID}"
PRACTITIONER = "Practitioner/pr-pain"
COVERAGE_ID = "cov-pump"
BASE = "http://example.org/fhir/cds-coverage"
PAYER_SYSTEM = "http://example.org/payer-id"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
HCPCS_BB = "https://bluebutton.cms.gov/resources/codesystem/hcpcs"
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
INTRATHECAL = "72607000"
EPIDURAL = "404820008"

SUPPORTED = "SUPPORTED"
NMN = "NOT_MEDICALLY_NECESSARY"
INSUFFICIENT = "INSUFFICIENT_DOCUMENTATION"
NOT_APPLICABLE = "NOT_APPLICABLE"

_ids = itertools.count(1)


def _next(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def day(offset: int, anchor: date = TRIAL_DAY) -> date:
    return anchor + timedelta(days=offset)


def _iso(d: date | str) -> str:
    return d.isoformat() if isinstance(d, date) else d


def _instant(d: date | str, at: str | None) -> str:
    text = _iso(d)
    return text if at is None or "T" in text else f"{text}T{at}:00-05:00"


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict:
    c: dict = {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}
    if text:
        c["text"] = text
    return c


# -- orders --------------------------------------------------------------------------------
def service_request(code: str, *, id: str | None = None, system: str | None = None,
                    authored: date | str | None = T0, reasons: Iterable[str] = ("M96.1",)) -> dict:
    """A draft ServiceRequest (procedure or supply): CPT for 5-digit codes, HCPCS otherwise."""
    system = system or (CPT if code.isdigit() else HCPCS)
    sr: dict = {
        "resourceType": "ServiceRequest",
        "id": id or f"sr-{code.lower()}",
        "status": "draft",
        "intent": "order",
        "code": concept(system, code),
        "subject": {"reference": PATIENT},
        "requester": {"reference": PRACTITIONER},
        "insurance": [{"reference": f"Coverage/{COVERAGE_ID}"}],
    }
    if authored is not None:
        sr["authoredOn"] = _iso(authored)
    if reasons:
        sr["reasonCode"] = [concept(ICD10, r) for r in reasons]
    return sr


def device_request(code: str, *, id: str | None = None, authored: date | str = T0,
                   reasons: Iterable[str] = ("M96.1",)) -> dict:
    dr: dict = {
        "resourceType": "DeviceRequest",
        "id": id or f"dr-{code.lower()}",
        "status": "draft",
        "intent": "original-order",
        "codeCodeableConcept": concept(HCPCS, code),
        "subject": {"reference": PATIENT},
        "requester": {"reference": PRACTITIONER},
        "authoredOn": _iso(authored),
        "insurance": [{"reference": f"Coverage/{COVERAGE_ID}"}],
    }
    if reasons:
        dr["reasonCode"] = [concept(ICD10, r) for r in reasons]
    return dr


def medication_request(rxnorm: str, name: str, *, id: str | None = None, route: str | None = INTRATHECAL,
                       authored: date | str = T0, status: str = "draft") -> dict:
    mr: dict = {
        "resourceType": "MedicationRequest",
        "id": id or f"mr-{name.split()[0].lower()}",
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": concept(RXNORM, rxnorm, name, name),
        "subject": {"reference": PATIENT},
        "requester": {"reference": PRACTITIONER},
        "authoredOn": _iso(authored),
    }
    if status == "draft":
        mr["insurance"] = [{"reference": f"Coverage/{COVERAGE_ID}"}]
    if route:
        display = {INTRATHECAL: "Intrathecal route", EPIDURAL: "Epidural route"}.get(route)
        mr["dosageInstruction"] = [{"text": f"{name} via pump", "route": concept(SNOMED, route, display)}]
    return mr


def morphine_it(**kw) -> dict:
    return medication_request("7052", "morphine", **kw)


def j2274(**kw) -> dict:
    kw.setdefault("reasons", ())
    return service_request("J2274", id=kw.pop("id", "sr-j2274"), **kw)


# -- clinical data ---------------------------------------------------------------------------
def condition(icd10: str, *, id: str | None = None, status: str | None = "active", onset: str = "2022-01-01",
              verification: str = "confirmed") -> dict:
    cond: dict = {
        "resourceType": "Condition",
        "id": id or _next("cond"),
        "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification),
        "code": concept(ICD10, icd10),
        "subject": {"reference": PATIENT},
        "onsetDateTime": onset,
    }
    if status:
        cond["clinicalStatus"] = concept("http://terminology.hl7.org/CodeSystem/condition-clinical", status)
    return cond


def procedure(cpt: str, performed: date | str, *, id: str | None = None, at: str | None = "10:00",
              status: str = "completed") -> dict:
    return {
        "resourceType": "Procedure",
        "id": id or _next("proc"),
        "status": status,
        "code": concept(CPT, cpt),
        "subject": {"reference": PATIENT},
        "performedDateTime": _instant(performed, at),
    }


def trial(performed: date | str = TRIAL_DAY, *, id: str = "proc-trial", cpt: str = "62322", at: str | None = "10:00") -> dict:
    return procedure(cpt, performed, id=id, at=at)


def pain(value: float, when: date | str, *, at: str | None = "09:00", part_of: str | None = None,
         id: str | None = None, unit: str | None = "{score}", status: str = "final") -> dict:
    """A pain severity score (LOINC 72514-3), 0–10."""
    q: dict = {"value": value}
    if unit is not None:
        q.update(system=UCUM, code=unit)
    obs: dict = {
        "resourceType": "Observation",
        "id": id or _next("pain"),
        "status": status,
        "code": concept(LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported"),
        "subject": {"reference": PATIENT},
        "effectiveDateTime": _instant(when, at),
        "valueQuantity": q,
    }
    if part_of:
        obs["partOf"] = [{"reference": part_of}]
    return obs


def allergy(text: str, *, code: str | None = None, system: str = RXNORM, id: str | None = None,
            clinical: str = "active", verification: str = "confirmed") -> dict:
    code_concept: dict = {"text": text}
    if code:
        code_concept["coding"] = [{"system": system, "code": code, "display": text}]
    return {
        "resourceType": "AllergyIntolerance",
        "id": id or _next("allergy"),
        "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", clinical),
        "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", verification),
        "code": code_concept,
        "patient": {"reference": PATIENT},
    }


def device(code: str, *, id: str | None = None, status: str = "active", system: str = HCPCS) -> dict:
    return {
        "resourceType": "Device",
        "id": id or _next("device"),
        "status": status,
        "type": concept(system, code),
        "patient": {"reference": PATIENT},
    }


def questionnaire_response(answers: Mapping[str, object], authored: date | str = T0, *, id: str | None = None) -> dict:
    items = []
    for link, value in answers.items():
        if isinstance(value, bool):
            ans = {"valueBoolean": value}
        elif isinstance(value, int):
            ans = {"valueInteger": value}
        elif isinstance(value, float):
            ans = {"valueDecimal": value}
        else:
            raise TypeError(value)
        items.append({"linkId": f"{PREFIX}/{link}", "answer": [ans]})
    return {
        "resourceType": "QuestionnaireResponse",
        "id": id or _next("qr"),
        "questionnaire": f"{BASE}/Questionnaire/{PREFIX}",
        "status": "completed",
        "subject": {"reference": PATIENT},
        "authored": _instant(authored, "10:00"),
        "item": items,
    }


def bundle(resources: Iterable[Mapping]) -> dict:
    entries = [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": dict(r)}
               for r in resources]
    out: dict = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    if entries:
        out["entry"] = entries
    return out


def patient(birth_date: str = "1961-04-12") -> dict:
    return {"resourceType": "Patient", "id": PATIENT_ID, "name": [{"family": "Rivera", "given": ["Dana"]}],
            "gender": "female", "birthDate": birth_date}


def coverage(payer: str = "centene") -> dict:
    return {
        "resourceType": "Coverage",
        "id": COVERAGE_ID,
        "status": "active",
        "beneficiary": {"reference": PATIENT},
        "payor": [{"identifier": {"system": PAYER_SYSTEM, "value": payer}}],
    }


def practitioner() -> dict:
    return {"resourceType": "Practitioner", "id": PRACTITIONER.split("/")[1], "name": [{"family": "Okafor", "given": ["Ada"]}],
            "qualification": [{"code": concept("http://terminology.hl7.org/CodeSystem/v2-0360", "MD")}]}


def pump_request(
    orders: Iterable[Mapping],
    *,
    answers: Mapping[str, object] | None = None,
    qr_authored: date | str = T0,
    observations: Iterable[Mapping] = (),
    conditions: Iterable[Mapping] = (),
    procedures: Iterable[Mapping] = (),
    medication_requests: Iterable[Mapping] = (),
    allergies: Iterable[Mapping] = (),
    devices: Iterable[Mapping] = (),
    questionnaire_responses: Iterable[Mapping] = (),
    payer: str = "centene",
    hook_instance: str = "5b0f8a4e-2f7c-4c55-9a3e-173000000001",
) -> dict:
    """A complete order-sign request with every §4.1 prefetch key present."""
    qrs = list(questionnaire_responses)
    if answers:
        qrs.insert(0, questionnaire_response(answers, qr_authored, id="qr-pump"))
    return {
        "hookInstance": hook_instance,
        "hook": "order-sign",
        "context": {
            "userId": PRACTITIONER,
            "patientId": PATIENT_ID,
            "draftOrders": {"resourceType": "Bundle", "type": "collection",
                            "entry": [{"resource": dict(o)} for o in orders]},
        },
        "prefetch": {
            "patient": patient(),
            "coverage": bundle([coverage(payer)]),
            "observations": bundle(list(observations)),
            "questionnaireResponses": bundle(qrs),
            "conditions": bundle(conditions),
            "encounters": bundle([]),
            "procedures": bundle(procedures),
            "medicationRequests": bundle(medication_requests),
            "allergies": bundle(allergies),
            "devices": bundle(devices),
            "deviceRequests": bundle([]),
            "diagnosticReports": bundle([]),
        },
    }


# -- canonical cases ---------------------------------------------------------------------------
TRIAL_NONMALIGNANT_ANSWERS = {
    "I.A.2.b": True,
    "I.A.2.c#pharmacotherapy": True, "I.A.2.c#physical-therapy": True,
    "I.A.2.c#behavioral-health": True, "I.A.2.c#nonsurgical": True,
    "I.A.2.d": True, "I.A.2.e": True, "I.A.2.g": True, "I.A.2.i": True,
}
IMPLANT_NONMALIGNANT_ANSWERS = {
    **TRIAL_NONMALIGNANT_ANSWERS,
    "II.A.2.a#function": True, "II.A.2.a#side-effects": True, "II.A.2.b": True, "II.A.2.d": True,
}
TRIAL_MALIGNANT_ANSWERS = {"I.A.1.a": True, "I.A.1.b": True, "I.A.1.c": True}
IMPLANT_MALIGNANT_ANSWERS = {**TRIAL_MALIGNANT_ANSWERS, "II.A.1.a#side-effects": True, "II.A.1.b": True}
MALIGNANT_REASONS = ("G89.3", "C50.911")
PSYCHOTHERAPY = procedure("90834", day(-20), id="proc-cbt")


def trial_data(pre: float = 8, post: float = 3, *, pre_day: date = day(-5), post_part_of: bool = True) -> dict:
    """A completed trial with a pre score and a post score (partOf the trial by default)."""
    obs = [pain(pre, pre_day, id="pain-pre")]
    if post_part_of:
        obs.append(pain(post, TRIAL_DAY, at="16:00", part_of="Procedure/proc-trial", id="pain-post"))
    else:
        obs.append(pain(post, day(2), id="pain-post"))
    return {"procedures": [trial(), PSYCHOTHERAPY], "observations": obs}


def nonmalignant_trial(**kw) -> dict:
    kw.setdefault("answers", TRIAL_NONMALIGNANT_ANSWERS)
    kw.setdefault("procedures", [PSYCHOTHERAPY])
    orders = kw.pop("orders", None) or [service_request("62322", reasons=kw.pop("reasons", ("M96.1",))), morphine_it()]
    return pump_request(orders, **kw)


def nonmalignant_implant(pre: float = 8, post: float = 3, **kw) -> dict:
    data = trial_data(pre, post)
    kw.setdefault("answers", IMPLANT_NONMALIGNANT_ANSWERS)
    kw.setdefault("procedures", data["procedures"])
    kw.setdefault("observations", data["observations"])
    orders = kw.pop("orders", None) or [service_request("62362", reasons=kw.pop("reasons", ("M96.1",))), morphine_it()]
    return pump_request(orders, **kw)


def malignant_implant(**kw) -> dict:
    data = trial_data()
    kw.setdefault("answers", IMPLANT_MALIGNANT_ANSWERS)
    kw.setdefault("procedures", data["procedures"])
    kw.setdefault("observations", data["observations"])
    orders = kw.pop("orders", None) or [service_request("62362", reasons=MALIGNANT_REASONS), morphine_it()]
    return pump_request(orders, **kw)


# -- reading the response -----------------------------------------------------------------------
def post(client, req) -> dict:
    resp = client.post("/cds-services/order-sign-crd", json=req)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def card_for(body: Mapping, order_ref: str | None = None) -> dict:
    cards = body["cards"]
    if order_ref is None:
        return cards[0]
    (card,) = [c for c in cards if c["extension"]["davinci-crd.associated-resource"][0]["reference"] == order_ref]
    return card


def ev(body: Mapping, order_ref: str | None = None) -> dict:
    return card_for(body, order_ref)["extension"]["cds-coverage.evaluation"]


def determination(body, order_ref=None) -> str:
    return ev(body, order_ref)["determination"]


def value(body, short_id: str, order_ref=None) -> str | None:
    for c in ev(body, order_ref)["criteria"]:
        if c["id"] == f"{PREFIX}/{short_id}":
            return c["value"]
    return None


def resolution(body, short_id: str, order_ref=None) -> str | None:
    for c in ev(body, order_ref)["criteria"]:
        if c["id"] == f"{PREFIX}/{short_id}":
            return c.get("resolution")
    return None


def deciding(body, order_ref=None) -> list[str]:
    return [d.split("/", 1)[1] for d in ev(body, order_ref)["deciding"]]


def advisories(body, order_ref=None) -> list[str]:
    return ev(body, order_ref)["advisories"]


TRIAL_ORDER = "ServiceRequest/sr-62322"
IMPLANT_ORDER = "ServiceRequest/sr-62362"


# == baselines ==================================================================================
def test_nonmalignant_trial_supported(client):
    body = post(client, nonmalignant_trial())
    assert determination(body, TRIAL_ORDER) == SUPPORTED
    assert ev(body, TRIAL_ORDER)["route"] == "I"
    assert value(body, "I.A.1", TRIAL_ORDER) is None  # §13.4: the malignant alternative is omitted
    assert value(body, "I.A.2.a", TRIAL_ORDER) == "TRUE"  # M96.1 identifies the pathology
    assert value(body, "I.A.2.h", TRIAL_ORDER) == "TRUE"  # INT-41 rule 3: no opioid MedicationRequest on file
    assert value(body, "I.A.2.f", TRIAL_ORDER) == "TRUE"  # psychotherapy 20 days before T0
    assert ev(body, TRIAL_ORDER)["revision"] == PREFIX


def test_nonmalignant_implant_supported(client):
    body = post(client, nonmalignant_implant())
    assert determination(body, IMPLANT_ORDER) == SUPPORTED
    assert ev(body, IMPLANT_ORDER)["route"] == "II"
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == "TRUE"
    assert value(body, "II.A.2#trial-criteria", IMPLANT_ORDER) == "TRUE"
    assert value(body, "I.A.2", IMPLANT_ORDER) == "TRUE"  # the trial criteria are part of II.A
    assert value(body, "II.A.1", IMPLANT_ORDER) is None


def test_malignant_implant_supported(client):
    body = post(client, malignant_implant())
    assert determination(body, IMPLANT_ORDER) == SUPPORTED
    assert value(body, "II.A.1.a#pain", IMPLANT_ORDER) == "TRUE"
    assert value(body, "II.A.2", IMPLANT_ORDER) is None
    assert "MD_REVIEW" not in advisories(body, IMPLANT_ORDER)


def test_revision_not_in_effect_before_2024(client):
    req = nonmalignant_trial(orders=[service_request("62322", authored="2023-12-31"), morphine_it()])
    body = post(client, req)
    assert determination(body, TRIAL_ORDER) == NOT_APPLICABLE
    assert card_for(body, TRIAL_ORDER)["summary"] == "NOT_APPLICABLE: no payer policy on file for 62322"


@pytest.mark.parametrize("code", ["62355", "62365", "62367", "62370", "S0093"])
def test_other_codes_are_not_applicable(client, code):
    body = post(client, nonmalignant_implant(orders=[service_request(code)]))
    assert determination(body) == NOT_APPLICABLE
    assert ev(body)["revision"] is None


# == trial result (§5.8) ==========================================================================
@pytest.mark.parametrize("post_score, expected_pain, expected", [
    (5.0, "TRUE", SUPPORTED),  # (10 − 5) / 10 = 50 %
    (5.1, "FALSE", NMN),  # 49 %
])
def test_trial_pain_reduction_boundary_50_percent(client, post_score, expected_pain, expected):
    body = post(client, nonmalignant_implant(10, post_score))
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == expected_pain
    assert determination(body, IMPLANT_ORDER) == expected
    if expected == NMN:
        assert "II.A.2.a#pain" in deciding(body, IMPLANT_ORDER)


def test_trial_pain_reduction_malignant_49_percent_is_not_medically_necessary(client):
    req = malignant_implant(observations=[pain(10, day(-3)), pain(5.1, day(3))])
    body = post(client, req)
    assert value(body, "II.A.1.a#pain", IMPLANT_ORDER) == "FALSE"
    assert determination(body, IMPLANT_ORDER) == NMN


@pytest.mark.parametrize("unit", ["{score}", "1", None])
def test_pain_score_units(client, unit):
    obs = [pain(8, day(-5), unit=unit), pain(4, TRIAL_DAY, at="15:00", part_of="Procedure/proc-trial", unit=unit)]
    body = post(client, nonmalignant_implant(observations=obs))
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == "TRUE"


def test_pain_score_in_other_unit_is_ignored(client):
    obs = [pain(8, day(-5), unit="mm"), pain(4, TRIAL_DAY, at="15:00", part_of="Procedure/proc-trial")]
    body = post(client, nonmalignant_implant(observations=obs))
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == "UNKNOWN"


@pytest.mark.parametrize("pre_at, expected", [
    ("09:59", "TRUE"),  # same day, timed before the 10:00 procedure
    ("10:30", "UNKNOWN"),  # same day, after the procedure: not a pre score
    (None, "UNKNOWN"),  # same day, untimed
])
def test_same_day_pre_score_must_be_timed_before_the_trial(client, pre_at, expected):
    obs = [pain(10, TRIAL_DAY, at=pre_at, id="pain-same-day"),
           pain(4, TRIAL_DAY, at="16:00", part_of="Procedure/proc-trial")]
    body = post(client, nonmalignant_implant(observations=obs))
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == expected
    if expected == "UNKNOWN":
        assert determination(body, IMPLANT_ORDER) == INSUFFICIENT
        assert f"`{PREFIX}/II.A.2.a#pain`" in resolution(body, "II.A.2.a#pain", IMPLANT_ORDER)


def test_same_day_pre_score_when_the_trial_has_no_time(client):
    obs = [pain(10, TRIAL_DAY, at="08:00"), pain(4, TRIAL_DAY, at="16:00", part_of="Procedure/proc-trial")]
    req = nonmalignant_implant(observations=obs, procedures=[trial(at=None), PSYCHOTHERAPY])
    assert value(post(client, req), "II.A.2.a#pain", IMPLANT_ORDER) == "UNKNOWN"


@pytest.mark.parametrize("days_before, expected", [(30, "TRUE"), (31, "UNKNOWN")])
def test_pre_score_window_is_30_days(client, days_before, expected):
    obs = [pain(10, day(-days_before)), pain(4, day(2))]
    assert value(post(client, nonmalignant_implant(observations=obs)), "II.A.2.a#pain", IMPLANT_ORDER) == expected


def test_latest_pre_score_counts(client):
    # 6 → 4 is 33 % (FALSE); the latest pre score 10 → 4 is 60 % (TRUE).
    obs = [pain(6, day(-20)), pain(10, day(-2)), pain(4, day(2))]
    assert value(post(client, nonmalignant_implant(observations=obs)), "II.A.2.a#pain", IMPLANT_ORDER) == "TRUE"
    obs = [pain(10, day(-20)), pain(6, day(-2)), pain(4, day(2))]
    assert value(post(client, nonmalignant_implant(observations=obs)), "II.A.2.a#pain", IMPLANT_ORDER) == "FALSE"


def test_score_part_of_the_trial_is_not_a_pre_score(client):
    obs = [pain(10, TRIAL_DAY, at="09:00", part_of="Procedure/proc-trial")]
    body = post(client, nonmalignant_implant(observations=obs))
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == "UNKNOWN"


def test_post_score_part_of_the_trial_wins_over_the_window(client):
    # partOf score 5 (50 %) is used even though a later window score 9 exists.
    obs = [pain(10, day(-3)), pain(5, TRIAL_DAY, at="18:00", part_of="Procedure/proc-trial"), pain(9, day(3))]
    assert value(post(client, nonmalignant_implant(observations=obs)), "II.A.2.a#pain", IMPLANT_ORDER) == "TRUE"
    # Without partOf, the latest score in [trial + 1, trial + 7] is used.
    obs = [pain(10, day(-3)), pain(3, day(2)), pain(9, day(3))]
    assert value(post(client, nonmalignant_implant(observations=obs)), "II.A.2.a#pain", IMPLANT_ORDER) == "FALSE"


@pytest.mark.parametrize("days_after, expected", [(0, "UNKNOWN"), (1, "TRUE"), (7, "TRUE"), (8, "UNKNOWN")])
def test_post_score_window_is_one_to_seven_days(client, days_after, expected):
    obs = [pain(10, day(-3)), pain(4, day(days_after), at="18:00")]
    assert value(post(client, nonmalignant_implant(observations=obs)), "II.A.2.a#pain", IMPLANT_ORDER) == expected


def test_latest_trial_in_the_year_is_used(client):
    old = trial(day(-40), id="proc-old-trial")
    obs = [pain(10, day(-45)), pain(2, day(-40), at="16:00", part_of="Procedure/proc-old-trial"),
           pain(10, day(-3)), pain(8, TRIAL_DAY, at="16:00", part_of="Procedure/proc-trial")]
    req = nonmalignant_implant(observations=obs, procedures=[old, trial(), PSYCHOTHERAPY])
    assert value(post(client, req), "II.A.2.a#pain", IMPLANT_ORDER) == "FALSE"


def test_trial_older_than_365_days_is_not_the_trial(client):
    old_day = T0 - timedelta(days=366)
    obs = [pain(10, old_day - timedelta(days=2)), pain(2, old_day, at="16:00", part_of="Procedure/proc-trial")]
    req = nonmalignant_implant(observations=obs, procedures=[trial(old_day), PSYCHOTHERAPY])
    body = post(client, req)
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == "UNKNOWN"
    assert determination(body, IMPLANT_ORDER) == INSUFFICIENT


def test_trial_procedure_must_be_completed(client):
    req = nonmalignant_implant(procedures=[trial() | {"status": "in-progress"}, PSYCHOTHERAPY])
    assert value(post(client, req), "II.A.2.a#pain", IMPLANT_ORDER) == "UNKNOWN"


@pytest.mark.parametrize("attested, expected", [(50.0, "TRUE"), (49.0, "FALSE"), (None, "UNKNOWN")])
def test_pre_score_zero_leaves_it_to_the_pain_attestation(client, attested, expected):
    obs = [pain(0, day(-3)), pain(0, day(2))]
    answers = dict(IMPLANT_NONMALIGNANT_ANSWERS)
    if attested is not None:
        answers["II.A.2.a#pain"] = attested
    body = post(client, nonmalignant_implant(observations=obs, answers=answers))
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == expected


def test_function_and_side_effects_by_attestation_only(client):
    answers = {**IMPLANT_NONMALIGNANT_ANSWERS, "II.A.2.a#function": False}
    body = post(client, nonmalignant_implant(answers=answers))
    assert determination(body, IMPLANT_ORDER) == NMN
    assert "II.A.2.a#function" in deciding(body, IMPLANT_ORDER)
    answers = {k: v for k, v in IMPLANT_NONMALIGNANT_ANSWERS.items() if k != "II.A.2.a#side-effects"}
    body = post(client, nonmalignant_implant(answers=answers))
    assert determination(body, IMPLANT_ORDER) == INSUFFICIENT
    assert value(body, "II.A.2.a#side-effects", IMPLANT_ORDER) == "UNKNOWN"


# == no trial: INT-42 and the medical-director note ================================================
def test_malignant_implant_without_trial_is_insufficient_with_md_review(client):
    body = post(client, malignant_implant(procedures=[], observations=[]))
    assert determination(body, IMPLANT_ORDER) == INSUFFICIENT
    assert "MD_REVIEW" in advisories(body, IMPLANT_ORDER)
    assert value(body, "II.A.1.a#pain", IMPLANT_ORDER) == "UNKNOWN"
    assert "II.A.1.a#pain" in deciding(body, IMPLANT_ORDER)


def test_malignant_waiver_keeps_trial_criterion_unknown(client):
    answers = {**IMPLANT_MALIGNANT_ANSWERS, "II.NOTE#waiver": True, "II.A.1.a#pain": 80.0}
    body = post(client, malignant_implant(procedures=[], observations=[], answers=answers))
    assert determination(body, IMPLANT_ORDER) == INSUFFICIENT
    assert value(body, "II.NOTE#waiver", IMPLANT_ORDER) == "UNKNOWN"
    assert value(body, "II.A.1.a#pain", IMPLANT_ORDER) == "UNKNOWN"
    assert "II.NOTE#waiver" in deciding(body, IMPLANT_ORDER)
    assert "MD_REVIEW" in advisories(body, IMPLANT_ORDER)


def test_waiver_does_not_apply_with_a_trial_on_file(client):
    answers = {**IMPLANT_MALIGNANT_ANSWERS, "II.NOTE#waiver": True}
    body = post(client, malignant_implant(answers=answers))
    assert value(body, "II.NOTE#waiver", IMPLANT_ORDER) is None
    assert determination(body, IMPLANT_ORDER) == SUPPORTED


def test_nonmalignant_implant_without_trial_is_insufficient_without_md_review(client):
    body = post(client, nonmalignant_implant(procedures=[PSYCHOTHERAPY], observations=[]))
    assert determination(body, IMPLANT_ORDER) == INSUFFICIENT
    assert value(body, "II.A.2.a#pain", IMPLANT_ORDER) == "UNKNOWN"
    assert "MD_REVIEW" not in advisories(body, IMPLANT_ORDER)


# == life expectancy (I.A.1.b, I.A.2.b) ===========================================================
@pytest.mark.parametrize("answer, expected", [(True, SUPPORTED), (False, NMN), (None, INSUFFICIENT)])
def test_life_expectancy_more_than_three_months_malignant(client, answer, expected):
    answers = {k: v for k, v in IMPLANT_MALIGNANT_ANSWERS.items() if k != "I.A.1.b"}
    if answer is not None:
        answers["I.A.1.b"] = answer
    body = post(client, malignant_implant(answers=answers))
    assert determination(body, IMPLANT_ORDER) == expected
    if expected != SUPPORTED:
        assert "I.A.1.b" in deciding(body, IMPLANT_ORDER)
        assert "II.A.1#trial-criteria" in deciding(body, IMPLANT_ORDER)


@pytest.mark.parametrize("answer, expected", [(True, SUPPORTED), (False, NMN), (None, INSUFFICIENT)])
def test_life_expectancy_more_than_three_months_nonmalignant_trial(client, answer, expected):
    answers = {k: v for k, v in TRIAL_NONMALIGNANT_ANSWERS.items() if k != "I.A.2.b"}
    if answer is not None:
        answers["I.A.2.b"] = answer
    body = post(client, nonmalignant_trial(answers=answers))
    assert determination(body, TRIAL_ORDER) == expected
    if expected != SUPPORTED:
        assert "I.A.2.b" in deciding(body, TRIAL_ORDER)


def test_stale_attestation_counts_as_unanswered(client):
    body = post(client, nonmalignant_trial(qr_authored=T0 - timedelta(days=91)))
    assert determination(body, TRIAL_ORDER) == INSUFFICIENT
    assert "stale" in resolution(body, "I.A.2.b", TRIAL_ORDER)
    body = post(client, nonmalignant_trial(qr_authored=T0 - timedelta(days=90)))
    assert determination(body, TRIAL_ORDER) == SUPPORTED


# == malignant-specific criteria ==================================================================
@pytest.mark.parametrize("code", ["C79.51", "C79.49", "G95.20"])
def test_epidural_metastases_make_i_a_1_c_false(client, code):
    req = pump_request([service_request("62322", reasons=MALIGNANT_REASONS + (code,)), morphine_it()],
                       answers=TRIAL_MALIGNANT_ANSWERS)
    body = post(client, req)
    assert value(body, "I.A.1.c", TRIAL_ORDER) == "FALSE"
    assert determination(body, TRIAL_ORDER) == NMN


def test_imaging_criterion_unknown_without_evidence(client):
    answers = {k: v for k, v in TRIAL_MALIGNANT_ANSWERS.items() if k != "I.A.1.c"}
    req = pump_request([service_request("62322", reasons=MALIGNANT_REASONS), morphine_it()], answers=answers)
    body = post(client, req)
    assert value(body, "I.A.1.c", TRIAL_ORDER) == "UNKNOWN"
    assert determination(body, TRIAL_ORDER) == INSUFFICIENT


def test_malignant_path_raises_safety_for_coagulopathy_not_a_criterion(client):
    body = post(client, malignant_implant(conditions=[condition("D68.9")]))
    assert determination(body, IMPLANT_ORDER) == SUPPORTED
    assert "SAFETY" in advisories(body, IMPLANT_ORDER)
    assert value(body, "II.A.2.c", IMPLANT_ORDER) is None


def test_malignant_path_raises_safety_without_wean_plan(client):
    body = post(client, malignant_implant(answers={**IMPLANT_MALIGNANT_ANSWERS, "II.A.2.b": False}))
    assert determination(body, IMPLANT_ORDER) == SUPPORTED
    assert "SAFETY" in advisories(body, IMPLANT_ORDER)


def test_malignant_implant_without_findings_has_no_safety(client):
    assert "SAFETY" not in advisories(post(client, malignant_implant()), IMPLANT_ORDER)


# == non-malignant implant criteria ===============================================================
@pytest.mark.parametrize("code, expected", [("D68.9", "FALSE"), ("D68.51", "TRUE"), ("D65", "FALSE")])
def test_coagulopathy_thrombophilia_is_not_coagulopathy(client, code, expected):
    body = post(client, nonmalignant_implant(conditions=[condition(code)]))
    assert value(body, "II.A.2.c", IMPLANT_ORDER) == expected


def test_intracranial_pressure_false_hydrocephalus_to_attestation(client):
    body = post(client, nonmalignant_implant(conditions=[condition("G93.2")]))
    assert value(body, "II.A.2.g", IMPLANT_ORDER) == "FALSE"
    assert determination(body, IMPLANT_ORDER) == NMN
    body = post(client, nonmalignant_implant(conditions=[condition("G91.9")]))
    assert value(body, "II.A.2.g", IMPLANT_ORDER) == "UNKNOWN"
    body = post(client, nonmalignant_implant(conditions=[condition("G91.9")],
                                             answers={**IMPLANT_NONMALIGNANT_ANSWERS, "II.A.2.g": True}))
    assert value(body, "II.A.2.g", IMPLANT_ORDER) == "TRUE"


def test_spinal_anomaly_to_attestation(client):
    body = post(client, nonmalignant_implant(conditions=[condition("M41.26")]))
    assert value(body, "II.A.2.h", IMPLANT_ORDER) == "UNKNOWN"
    assert determination(body, IMPLANT_ORDER) == INSUFFICIENT
    body = post(client, nonmalignant_implant(conditions=[condition("M41.26")],
                                             answers={**IMPLANT_NONMALIGNANT_ANSWERS, "II.A.2.h": False}))
    assert value(body, "II.A.2.h", IMPLANT_ORDER) == "FALSE"
    assert determination(body, IMPLANT_ORDER) == NMN


@pytest.mark.parametrize("extra, expected", [
    ({"conditions": [condition("Z95.0")]}, "UNKNOWN"),  # pacemaker
    ({"devices": [device("K0000", system="http://example.org/device-type")]}, "UNKNOWN"),  # any active Device
    ({"devices": [device("K0000", status="inactive", system="http://example.org/device-type")]}, "TRUE"),
    ({}, "TRUE"),
])
def test_other_programmable_device(client, extra, expected):
    body = post(client, nonmalignant_implant(**extra))
    assert value(body, "II.A.2.e", IMPLANT_ORDER) == expected


# == contraindications (I.B, II.B; closed world) ======================================================
@pytest.mark.parametrize("code, node", [
    ("F11.20", "B.2"), ("F10.20", "B.2"), ("F19.10", "B.2"),
    ("F03.90", "B.3"), ("G30.9", "B.3"), ("F20.9", "B.3"), ("F31.2", "B.3"),
    ("A41.9", "B.4"), ("R65.20", "B.4"),
])
def test_contraindication_diagnoses(client, code, node):
    body = post(client, nonmalignant_trial(conditions=[condition(code, id="c-contra")]))
    assert determination(body, TRIAL_ORDER) == NMN
    assert f"I.{node}" in deciding(body, TRIAL_ORDER)
    body = post(client, nonmalignant_implant(conditions=[condition(code, id="c-contra")]))
    assert determination(body, IMPLANT_ORDER) == NMN
    assert f"II.{node}" in deciding(body, IMPLANT_ORDER)


@pytest.mark.parametrize("code", ["F11.21", "F11.11", "F17.210", "F10.91"])
def test_remission_and_nicotine_are_not_active_abuse(client, code):
    body = post(client, nonmalignant_trial(conditions=[condition(code)]))
    assert value(body, "I.B.2", TRIAL_ORDER) == "FALSE"
    assert determination(body, TRIAL_ORDER) == SUPPORTED


def test_resolved_or_refuted_condition_does_not_exclude(client):
    conds = [condition("F03.90", status="resolved"), condition("A41.9", verification="refuted")]
    assert determination(post(client, nonmalignant_trial(conditions=conds)), TRIAL_ORDER) == SUPPORTED


@pytest.mark.parametrize("kw, expected", [
    ({}, "TRUE"),
    ({"clinical": "inactive"}, "FALSE"),
    ({"verification": "refuted"}, "FALSE"),
])
def test_implant_material_allergy(client, kw, expected):
    body = post(client, nonmalignant_trial(allergies=[allergy("Titanium", **kw)]))
    assert value(body, "I.B.1", TRIAL_ORDER) == expected
    assert determination(body, TRIAL_ORDER) == (NMN if expected == "TRUE" else SUPPORTED)


@pytest.mark.parametrize("dx, answer, expected_node, expected", [
    (True, None, "UNKNOWN", INSUFFICIENT),  # → A: the attestation decides while the diagnosis is present
    (True, True, "TRUE", NMN),
    (True, False, "FALSE", SUPPORTED),
    (False, None, "FALSE", SUPPORTED),  # §13.2: closed world
    (False, True, "TRUE", NMN),
])
def test_site_infection(client, dx, answer, expected_node, expected):
    answers = dict(TRIAL_NONMALIGNANT_ANSWERS)
    if answer is not None:
        answers["I.B.5"] = answer
    conds = [condition("L03.311")] if dx else []
    body = post(client, nonmalignant_trial(conditions=conds, answers=answers))
    assert value(body, "I.B.5", TRIAL_ORDER) == expected_node
    assert determination(body, TRIAL_ORDER) == expected


def test_site_infection_implant_uses_its_own_item(client):
    answers = {**IMPLANT_NONMALIGNANT_ANSWERS, "II.B.5": True}
    body = post(client, nonmalignant_implant(answers=answers))
    assert value(body, "II.B.5", IMPLANT_ORDER) == "TRUE"
    assert value(body, "I.B.5", IMPLANT_ORDER) == "FALSE"
    assert determination(body, IMPLANT_ORDER) == NMN


# == allergy to an ordered ingredient (A-59) ========================================================
@pytest.mark.parametrize("allergen, kw, expected", [
    (allergy("Morphine", code="7052"), {}, "FALSE"),
    (allergy("morphine sulfate"), {}, "FALSE"),  # the ingredient name in text matches
    (allergy("Fentanyl", code="4337"), {}, "TRUE"),  # not an ordered ingredient
    (allergy("Morphine", code="7052", verification="refuted"), {}, "TRUE"),
    (allergy("Morphine", code="7052", clinical="inactive"), {}, "TRUE"),
])
def test_allergy_to_ordered_ingredient(client, allergen, kw, expected):
    body = post(client, nonmalignant_implant(allergies=[allergen]))
    assert value(body, "II.A.2.f", IMPLANT_ORDER) == expected
    assert determination(body, IMPLANT_ORDER) == (NMN if expected == "FALSE" else SUPPORTED)


def test_allergy_to_j2274_morphine_and_hydromorphone_order(client):
    req = malignant_implant(orders=[service_request("62362", reasons=MALIGNANT_REASONS), j2274()],
                            allergies=[allergy("Morphine", code="7052")])
    body = post(client, req)
    assert value(body, "II.A.1.d", IMPLANT_ORDER) == "FALSE"
    assert determination(body, IMPLANT_ORDER) == NMN
    req = malignant_implant(orders=[service_request("62362", reasons=MALIGNANT_REASONS),
                                    medication_request("3423", "hydromorphone")],
                            allergies=[allergy("Morphine", code="7052")])
    assert value(post(client, req), "II.A.1.d", IMPLANT_ORDER) == "TRUE"


def test_allergy_to_non_opioid_ingredient_of_the_pump_mix(client):
    orders = [service_request("62362"), morphine_it(), medication_request("1815", "bupivacaine", id="mr-bupi")]
    body = post(client, nonmalignant_implant(orders=orders, allergies=[allergy("Bupivacaine")]))
    assert value(body, "II.A.2.f", IMPLANT_ORDER) == "FALSE"


# == I.A.2.h opioid wean (INT-41) ================================================================
OXY_HISTORY = medication_request("7804", "oxycodone", id="mr-oxy-home", route=None, authored="2025-01-10", status="active")


@pytest.mark.parametrize("answers, history, expected", [
    ({"I.A.2.h#baseline-mme": 120.0, "I.A.2.h#current-mme": 60.0}, [OXY_HISTORY], "TRUE"),  # 50 %
    ({"I.A.2.h#baseline-mme": 120.0, "I.A.2.h#current-mme": 61.0}, [OXY_HISTORY], "FALSE"),  # 49.2 %
    ({"I.A.2.h#baseline-mme": 120.0, "I.A.2.h#current-mme": 61.0, "I.A.2.h": True}, [], "FALSE"),  # rule 1 first
    ({"I.A.2.h#baseline-mme": 120.0, "I.A.2.h": True}, [OXY_HISTORY], "TRUE"),  # one value: rule 2
    ({"I.A.2.h": False}, [], "FALSE"),  # rule 2 before rule 3
    ({"I.A.2.h#baseline-mme": 0.0, "I.A.2.h#current-mme": 0.0}, [], "TRUE"),  # not computable: rule 3
    ({}, [], "TRUE"),  # rule 3
    ({}, [OXY_HISTORY], "UNKNOWN"),  # rule 4
    ({}, [OXY_HISTORY | {"authoredOn": "2024-05-31"}], "TRUE"),  # authored before T0 − 365
    ({}, [OXY_HISTORY | {"authoredOn": "2024-06-01"}], "UNKNOWN"),  # T0 − 365 is in the window
])
def test_opioid_wean_rules(client, answers, history, expected):
    body = post(client, nonmalignant_trial(answers={**TRIAL_NONMALIGNANT_ANSWERS, **answers}, medication_requests=history))
    assert value(body, "I.A.2.h", TRIAL_ORDER) == expected


def test_opioid_wean_unknown_names_the_mme_items(client):
    body = post(client, nonmalignant_trial(medication_requests=[OXY_HISTORY]))
    assert determination(body, TRIAL_ORDER) == INSUFFICIENT
    res = resolution(body, "I.A.2.h", TRIAL_ORDER)
    assert "I.A.2.h#baseline-mme" in res and "I.A.2.h#current-mme" in res


def test_draft_opioid_order_is_not_wean_history(client):
    # The morphine MedicationRequest in draftOrders does not count for INT-41 rule 3.
    body = post(client, nonmalignant_trial(medication_requests=[morphine_it()]))
    assert value(body, "I.A.2.h", TRIAL_ORDER) == "TRUE"


# == psychotherapy (I.A.2.f, II.A.2.i; INT-40) ======================================================
@pytest.mark.parametrize("days_before, answer, expected", [
    (90, None, "TRUE"),
    (0, None, "TRUE"),
    (91, None, "UNKNOWN"),
    (91, True, "TRUE"),
    (91, False, "FALSE"),
])
def test_psychotherapy_within_90_days(client, days_before, answer, expected):
    answers = {k: v for k, v in TRIAL_NONMALIGNANT_ANSWERS.items()}
    if answer is not None:
        answers["I.A.2.f"] = answer
    proc = procedure("90837", T0 - timedelta(days=days_before), id="proc-psy")
    body = post(client, nonmalignant_trial(procedures=[proc], answers=answers))
    assert value(body, "I.A.2.f", TRIAL_ORDER) == expected


def test_psychological_evaluation_is_not_psychotherapy(client):
    body = post(client, nonmalignant_trial(procedures=[procedure("90791", T0 - timedelta(days=10))]))
    assert value(body, "I.A.2.f", TRIAL_ORDER) == "UNKNOWN"


def test_continued_behavioral_treatment_for_implant(client):
    body = post(client, nonmalignant_implant())
    assert value(body, "II.A.2.i", IMPLANT_ORDER) == "TRUE"
    data = trial_data()
    body = post(client, nonmalignant_implant(procedures=[trial()], observations=data["observations"],
                                             answers={**IMPLANT_NONMALIGNANT_ANSWERS, "I.A.2.f": True}))
    assert value(body, "II.A.2.i", IMPLANT_ORDER) == "UNKNOWN"
    assert value(body, "I.A.2.f", IMPLANT_ORDER) == "TRUE"


def test_psychological_evaluation_false_means_major_contributor(client):
    body = post(client, nonmalignant_trial(answers={**TRIAL_NONMALIGNANT_ANSWERS, "I.A.2.e": False}))
    assert determination(body, TRIAL_ORDER) == NMN
    assert "I.A.2.e" in deciding(body, TRIAL_ORDER)


def test_conservative_treatment_needs_all_four(client):
    body = post(client, nonmalignant_trial(answers={**TRIAL_NONMALIGNANT_ANSWERS, "I.A.2.c#physical-therapy": False}))
    assert determination(body, TRIAL_ORDER) == NMN
    assert "I.A.2.c#physical-therapy" in deciding(body, TRIAL_ORDER)


# == indication paths (§13.4) ======================================================================
def test_malignant_only_omits_nonmalignant_path(client):
    req = pump_request([service_request("62322", reasons=MALIGNANT_REASONS), morphine_it()], answers=TRIAL_MALIGNANT_ANSWERS)
    body = post(client, req)
    assert value(body, "I.A.1", TRIAL_ORDER) == "TRUE"
    assert value(body, "I.A.2", TRIAL_ORDER) is None
    assert determination(body, TRIAL_ORDER) == SUPPORTED


@pytest.mark.parametrize("reasons", [("C34.90",), ("G89.3",)])
def test_malignancy_or_neoplasm_pain_selects_malignant_path(client, reasons):
    req = pump_request([service_request("62322", reasons=reasons), morphine_it()], answers=TRIAL_MALIGNANT_ANSWERS)
    body = post(client, req)
    assert value(body, "I.A.2", TRIAL_ORDER) is None
    assert determination(body, TRIAL_ORDER) == SUPPORTED


def test_both_paths_any(client):
    # Malignant path unanswered, non-malignant met: ANY → TRUE.
    req = nonmalignant_trial(reasons=("M96.1", "C50.911"))
    body = post(client, req)
    assert value(body, "I.A.1", TRIAL_ORDER) == "UNKNOWN"
    assert value(body, "I.A.2", TRIAL_ORDER) == "TRUE"
    assert determination(body, TRIAL_ORDER) == SUPPORTED


def test_neither_path_evaluates_both_and_reports_unknowns(client):
    req = pump_request([service_request("62322", reasons=("M54.50",)), morphine_it()], procedures=[PSYCHOTHERAPY])
    body = post(client, req)
    assert value(body, "I.A.1", TRIAL_ORDER) == "UNKNOWN"
    assert value(body, "I.A.2", TRIAL_ORDER) == "UNKNOWN"
    assert value(body, "I.A.2.a", TRIAL_ORDER) == "UNKNOWN"
    assert determination(body, TRIAL_ORDER) == INSUFFICIENT
    assert {"I.A.1.a", "I.A.2.b"} <= set(deciding(body, TRIAL_ORDER))


@pytest.mark.parametrize("reason, answer, expected", [
    ("G89.4", None, "UNKNOWN"),  # path only: the pathology is not identified by the code
    ("G89.29", True, "TRUE"),  # attested (ANY freshness)
    ("G90.512", None, "TRUE"),  # CRPS identifies the pathology
])
def test_nonmalignant_path_codes_and_pathology(client, reason, answer, expected):
    extra = [] if answer is None else [questionnaire_response({"I.A.2.a": answer}, "2019-01-01", id="qr-old")]
    body = post(client, nonmalignant_trial(reasons=(reason,), questionnaire_responses=extra))
    assert value(body, "I.A.1", TRIAL_ORDER) is None
    assert value(body, "I.A.2.a", TRIAL_ORDER) == expected


def test_condition_resource_selects_path_without_reason_code(client):
    req = nonmalignant_trial(reasons=(), conditions=[condition("G56.41")])
    body = post(client, req)
    assert value(body, "I.A.1", TRIAL_ORDER) is None
    assert determination(body, TRIAL_ORDER) == SUPPORTED


# == routing, episode and C1755 (§3.2) ================================================================
def test_c1755_alone_routes_to_trial_section(client):
    body = post(client, nonmalignant_trial(orders=[service_request("C1755"), morphine_it()]))
    e = ev(body, "ServiceRequest/sr-c1755")
    assert e["route"] == "I"
    assert e["determination"] == SUPPORTED


def test_c1755_with_implant_procedure_routes_to_implant_section(client):
    orders = [service_request("62362"), service_request("C1755", system=HCPCS_BB), morphine_it()]
    body = post(client, nonmalignant_implant(orders=orders))
    assert ev(body, "ServiceRequest/sr-c1755")["route"] == "II"
    assert determination(body, "ServiceRequest/sr-c1755") == SUPPORTED


def test_trial_code_in_an_implant_episode_takes_the_implant_section(client):
    orders = [service_request("62322"), service_request("62362"), morphine_it()]
    body = post(client, nonmalignant_implant(orders=orders))
    assert ev(body, TRIAL_ORDER)["route"] == "II"


def test_device_request_implant_codes(client):
    orders = [service_request("62362"), device_request("E0783"), morphine_it()]
    body = post(client, nonmalignant_implant(orders=orders))
    assert determination(body, "DeviceRequest/dr-e0783") == SUPPORTED
    assert ev(body, "DeviceRequest/dr-e0783")["route"] == "II"


def test_episode_drug_orders_take_the_pump_determination(client):
    orders = [service_request("62362"), j2274(), morphine_it()]
    body = post(client, nonmalignant_implant(10, 5.1, orders=orders))
    assert determination(body, IMPLANT_ORDER) == NMN
    assert determination(body, "ServiceRequest/sr-j2274") == NMN
    assert determination(body, "MedicationRequest/mr-morphine") == NMN
    body = post(client, nonmalignant_implant(orders=orders))
    assert determination(body, "ServiceRequest/sr-j2274") == SUPPORTED
    assert determination(body, "MedicationRequest/mr-morphine") == SUPPORTED


def test_j2274_alone_is_not_applicable(client):
    body = post(client, nonmalignant_implant(orders=[j2274()]))
    assert determination(body) == NOT_APPLICABLE


# == applicability (§3.2 APPL, §13.5) ================================================================
def test_baclofen_is_not_applicable(client):
    orders = [service_request("62362"), medication_request("1292", "baclofen", id="mr-baclofen")]
    body = post(client, nonmalignant_implant(orders=orders))
    assert determination(body, IMPLANT_ORDER) == NOT_APPLICABLE
    assert "APPL#no-baclofen" in deciding(body, IMPLANT_ORDER)
    assert determination(body, "MedicationRequest/mr-baclofen") == NOT_APPLICABLE


def test_baclofen_with_an_opioid_is_still_not_applicable(client):
    orders = [service_request("62362"), medication_request("1292", "baclofen", id="mr-baclofen"), morphine_it()]
    assert determination(post(client, nonmalignant_implant(orders=orders)), IMPLANT_ORDER) == NOT_APPLICABLE


def test_drugs_without_an_opioid_are_not_applicable(client):
    orders = [service_request("62362"), medication_request("1815", "bupivacaine", id="mr-bupi")]
    body = post(client, nonmalignant_implant(orders=orders))
    assert determination(body, IMPLANT_ORDER) == NOT_APPLICABLE
    assert "APPL#opioid-for-pain" in deciding(body, IMPLANT_ORDER)


def test_epidural_opioid_by_route_and_j2274_count_as_opioid(client):
    orders = [service_request("62322"), medication_request("3423", "hydromorphone", route=EPIDURAL)]
    assert determination(post(client, nonmalignant_trial(orders=orders)), TRIAL_ORDER) == SUPPORTED
    orders = [service_request("62322"), j2274()]
    assert determination(post(client, nonmalignant_trial(orders=orders)), TRIAL_ORDER) == SUPPORTED


@pytest.mark.parametrize("answer, expected", [(True, SUPPORTED), (False, NOT_APPLICABLE), (None, INSUFFICIENT)])
def test_no_drug_order_opioid_for_pain_attestation(client, answer, expected):
    answers = dict(TRIAL_NONMALIGNANT_ANSWERS)
    if answer is not None:
        answers["APPL#opioid-for-pain"] = answer
    body = post(client, nonmalignant_trial(orders=[service_request("62322")], answers=answers))
    assert determination(body, TRIAL_ORDER) == expected
    if expected != SUPPORTED:
        assert "APPL#opioid-for-pain" in deciding(body, TRIAL_ORDER)


def test_applicability_unknown_is_insufficient_even_when_criteria_fail(client):
    # §13.5: with applicability UNKNOWN the result is INSUFFICIENT, naming the applicability item.
    req = nonmalignant_trial(orders=[service_request("62322")], conditions=[condition("F03.90")])
    body = post(client, req)
    assert determination(body, TRIAL_ORDER) == INSUFFICIENT
    assert "APPL#opioid-for-pain" in deciding(body, TRIAL_ORDER)
    assert f"{PREFIX}/APPL#opioid-for-pain" in card_for(body, TRIAL_ORDER)["detail"]


# == replacement (A-56) ======================================================================
@pytest.mark.parametrize("code", ["E0785", "E0786"])
def test_replacement_codes_not_applicable_with_md_review(client, code):
    body = post(client, nonmalignant_implant(orders=[device_request(code), morphine_it()]))
    ref = f"DeviceRequest/dr-{code.lower()}"
    assert determination(body, ref) == NOT_APPLICABLE
    assert "MD_REVIEW" in advisories(body, ref)
    assert "APPL#not-replacement" in deciding(body, ref)


@pytest.mark.parametrize("extra", [
    {"devices": [device("E0783", id="dev-pump")]},
    {"devices": [device("C1772", id="dev-pump", system=HCPCS_BB)]},
    {"answers": {**IMPLANT_NONMALIGNANT_ANSWERS, "ROUTE#replacement": True}},
])
def test_implant_when_replacing_is_not_applicable_with_md_review(client, extra):
    body = post(client, nonmalignant_implant(**extra))
    assert determination(body, IMPLANT_ORDER) == NOT_APPLICABLE
    assert "MD_REVIEW" in advisories(body, IMPLANT_ORDER)


def test_inactive_old_pump_is_not_a_replacement(client):
    body = post(client, nonmalignant_implant(devices=[device("E0783", status="inactive")]))
    assert determination(body, IMPLANT_ORDER) == SUPPORTED


def test_trial_is_not_a_replacement(client):
    body = post(client, nonmalignant_trial(answers={**TRIAL_NONMALIGNANT_ANSWERS, "ROUTE#replacement": True}))
    assert determination(body, TRIAL_ORDER) == SUPPORTED


# == cards ================================================================================
def test_insufficient_card_asks_for_the_questionnaire(client):
    answers = {k: v for k, v in TRIAL_NONMALIGNANT_ANSWERS.items() if k != "I.A.2.d"}
    body = post(client, nonmalignant_trial(answers=answers))
    card = card_for(body, TRIAL_ORDER)
    assert card["summary"].startswith("INSUFFICIENT_DOCUMENTATION: 62322")
    assert "CP.MP.173 rev 01/24" in card["summary"]
    assert f"answer Questionnaire item `{PREFIX}/I.A.2.d` (boolean)" in card["detail"]


def test_questionnaire_is_served(client):
    resp = client.get(f"/fhir/Questionnaire/{PREFIX}")
    assert resp.status_code == 200
    links = set()

    def walk(items):
        for it in items or []:
            links.add(it["linkId"])
            walk(it.get("item"))

    walk(resp.get_json()["item"])
    for item in ("APPL#opioid-for-pain", "ROUTE#replacement", "I.A.2.h#baseline-mme", "II.NOTE#waiver",
                 "I.A.2.c#nonsurgical", "II.A.2.a#pain", "II.B.5"):
        assert f"{PREFIX}/{item}" in links


def test_pre_score_before_t0_minus_365_is_ignored(client):
    # §4.2: a trial 360 days before T0 whose only pre score is 366 days before T0 has no usable pre score.
    trial_day = T0 - timedelta(days=360)
    obs = [pain(10, T0 - timedelta(days=366)), pain(4, trial_day, at="16:00", part_of="Procedure/proc-trial")]
    req = nonmalignant_implant(observations=obs, procedures=[trial(trial_day), PSYCHOTHERAPY])
    assert value(post(client, req), "II.A.2.a#pain", IMPLANT_ORDER) == "UNKNOWN"
    obs[0] = pain(10, T0 - timedelta(days=365))
    req = nonmalignant_implant(observations=obs, procedures=[trial(trial_day), PSYCHOTHERAPY])
    assert value(post(client, req), "II.A.2.a#pain", IMPLANT_ORDER) == "TRUE"
