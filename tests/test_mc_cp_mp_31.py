"""MC.CP.MP.31 rev 08/25 (Cosmetic and Reconstructive Procedures, payer centene-medicare), end to end.

Each test posts an order-sign request with one ServiceRequest (CPT ``http://www.ama-assn.org/go/cpt``,
HCPCS for G0429/Q2026/Q2028) and reads the card's ``cds-coverage.evaluation``. T0 = 2025-10-01 unless
stated; "today" is FIXED_NOW (2025-12-31). Contract: §3.3 (codes, root = ALL(NONE(II), I.A), one I.A
alternative, A-65, A-66, A-70), §6 (SCAR, COSMETIC-ONLY, BREAST-RECON, INT-43), §7.1 (mastectomy),
§9.3 (items, `II` when unanswered), §11 rulings 26-27 (INT-44, A-62, A-63).
"""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds_service import create_app
from cds_service.library import load_library
from conftest import FIXED_NOW, REPO

PREFIX = "MC.CP.MP.31-2025"
T0 = date(2025, 10, 1)
PATIENT_ID = "pt-mc31"
PRACTITIONER = "Practitioner/pr-plastics"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
PAYER_SYSTEM = "http://example.org/payer-id"
BASE = "http://example.org/fhir/cds-coverage"
CI_URL = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"

SUPPORTED = "SUPPORTED"
NMN = "NOT_MEDICALLY_NECESSARY"
INSUFFICIENT = "INSUFFICIENT_DOCUMENTATION"
NOT_APPLICABLE = "NOT_APPLICABLE"

# §3.3, ranges written out.
CPT_CODES = (
    ["11200", "11201"] + [str(c) for c in range(11400, 11405)] + ["11406"] + [str(c) for c in range(11420, 11425)]
    + ["11426"] + [str(c) for c in range(11440, 11445)] + ["11446", "11920", "11921", "11922", "15220", "15221"]
    + [str(c) for c in range(15771, 15777)] + ["15788", "15789", "15792", "15793", "15830"]
    + [str(c) for c in range(15832, 15840)] + ["15847"] + [str(c) for c in range(15876, 15880)] + ["17110", "17111"]
    + ["19301", "19302", "19303", "19316", "19318", "19325", "19328", "19330", "19340", "19342", "19350", "19355",
       "19357", "19361", "19364"] + [str(c) for c in range(19367, 19372)] + ["19380", "19396", "19499"]
    + [str(c) for c in range(21120, 21124)] + ["21137", "21138", "21139", "21159", "21160", "21172", "21175"]
    + [str(c) for c in range(21179, 21185)] + ["21230", "21235", "21255", "21256", "21260", "21261", "21263", "21267",
                                                 "21268", "21270", "21275", "21280", "21282", "21295", "21296"]
    + ["61550", "61552", "61556", "61557", "61558", "61559"]
)
HCPCS_CODES = ["G0429", "Q2026", "Q2028"]
INT44_CODES = ["19316", "19318", "19325", "19340", "19342", "19350", "19357", "19361", "19364", "19367", "19368",
               "19369", "19380", "19396", "11920", "11921", "11922"]


# -- builders ----------------------------------------------------------------------------------------
def _bundle(resources) -> dict:
    entries = [{"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r} for r in resources]
    out = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    if entries:
        out["entry"] = entries
    return out


def concept(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def condition(icd: str | None, *, id: str, status: str = "active", snomed: str | None = None) -> dict:
    code = concept(SNOMED, snomed) if snomed else concept(ICD10, icd)
    return {
        "resourceType": "Condition", "id": id,
        "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", status),
        "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed"),
        "code": code, "subject": {"reference": f"Patient/{PATIENT_ID}"}, "onsetDateTime": "2020-01-01",
    }


def procedure(cpt: str, *, id: str = "proc-mast", status: str = "completed", performed: str = "2024-03-05") -> dict:
    return {"resourceType": "Procedure", "id": id, "status": status, "code": concept(CPT, cpt),
            "subject": {"reference": f"Patient/{PATIENT_ID}"}, "performedDateTime": performed}


def service_request(code: str, *, id: str = "sr-1", reasons=("L91.8",), authored: date | str | None = T0) -> dict:
    system = HCPCS if code[0].isalpha() else CPT
    sr = {
        "resourceType": "ServiceRequest", "id": id, "status": "draft", "intent": "original-order",
        "code": concept(system, code), "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "requester": {"reference": PRACTITIONER}, "insurance": [{"reference": "Coverage/cov-1"}],
    }
    if authored is not None:
        sr["authoredOn"] = authored.isoformat() if isinstance(authored, date) else authored
    if reasons:
        sr["reasonCode"] = [concept(ICD10, r) for r in reasons]
    return sr


def questionnaire_response(answers: dict, authored: date, id: str = "qr-1") -> dict:
    return {
        "resourceType": "QuestionnaireResponse", "id": id, "status": "completed",
        "questionnaire": f"{BASE}/Questionnaire/{PREFIX}", "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "authored": f"{authored.isoformat()}T10:00:00-05:00",
        "item": [{"linkId": f"{PREFIX}/{k}", "answer": [{"valueBoolean": v}]} for k, v in answers.items()],
    }


def request(code: str = "11200", *, reasons=("L91.8",), answers: dict | None = None, conditions=(), procedures=(),
            payer: str = "centene-medicare", authored: date | str | None = T0, qr_authored: date | None = None,
            extra_orders=()) -> dict:
    t0 = authored if isinstance(authored, date) else T0
    qrs = [questionnaire_response(answers, qr_authored or t0)] if answers else []
    orders = [service_request(code, reasons=reasons, authored=authored)] + list(extra_orders)
    return {
        "hookInstance": "4e7d1f0a-2b6c-4c1e-9d3a-8f5b6a7c9e01",
        "hook": "order-sign",
        "context": {
            "userId": PRACTITIONER, "patientId": PATIENT_ID,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o} for o in orders]},
        },
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": "1954-03-02", "gender": "female"},
            "coverage": _bundle([{"resourceType": "Coverage", "id": "cov-1", "status": "active",
                                  "beneficiary": {"reference": f"Patient/{PATIENT_ID}"},
                                  "payor": [{"identifier": {"system": PAYER_SYSTEM, "value": payer}}]}]),
            "observations": _bundle([]),
            "questionnaireResponses": _bundle(qrs),
            "conditions": _bundle(list(conditions)),
            "encounters": _bundle([]),
            "procedures": _bundle(list(procedures)),
            "medicationRequests": _bundle([]),
            "allergies": _bundle([]),
            "devices": _bundle([]),
            "deviceRequests": _bundle([]),
            "diagnosticReports": _bundle([]),
        },
    }


def post(client, req) -> dict:
    resp = client.post("/cds-services/order-sign-crd", json=req)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def evaluation(body, index: int = 0) -> dict:
    return body["cards"][index]["extension"]["cds-coverage.evaluation"]


def values(body, index: int = 0) -> dict[str, str]:
    return {c["id"].split("/", 1)[1]: c["value"] for c in evaluation(body, index)["criteria"]}


def deciding(body, index: int = 0) -> list[str]:
    return [d.split("/", 1)[1] for d in evaluation(body, index)["deciding"]]


def determination(body, index: int = 0) -> str:
    return evaluation(body, index)["determination"]


def coverage_information(body, index: int = 0) -> dict:
    resource = body["systemActions"][index]["resource"]
    (ext,) = [e for e in resource["extension"] if e["url"] == CI_URL]
    return {s["url"]: next(v for k, v in s.items() if k.startswith("value")) for s in ext["extension"]}


# -- codes, payer, revision ------------------------------------------------------------------------------
def test_every_contract_code_is_governed_and_nothing_else():
    policy = load_library(REPO / "policies").by_prefix(PREFIX)
    assert sorted(c for codes in policy.orders.values() for c in codes) == sorted(CPT_CODES + HCPCS_CODES)
    assert len(set(CPT_CODES)) == len(CPT_CODES) == 112
    for unlisted in ("15780", "11300", "15828", "19300", "19304", "19305", "61551", "G0430"):
        assert policy.role_of(unlisted) is None


def test_outline_and_policy_text():
    policy = load_library(REPO / "policies").by_prefix(PREFIX)
    for node_id in ("I", "I.A", "I.A.1", "I.A.2", "I.A.3", "II", "I.A.1#cause", "I.A.1#function", "I.A.1#conservative",
                    "I.A.2#eyesight", "I.A.2#friction", "I.A.2#irritation", "I.A.2#bleeding", "I.A.3#pain",
                    "I.A.3#infected", "I.A.3#unstable", "I.A.3#friable", "I.A.3#function", "APPL"):
        assert policy.has_node(node_id), node_id
    assert all(node.text for node in policy.all_nodes())
    assert policy.node("I.A.2").text.startswith("Skin tag removal when located in an area that affects eyesight")
    assert "sole purpose of improving appearance" in policy.node("II").text
    assert (policy.effective_start, policy.effective_end, policy.payer) == (date(2025, 8, 1), None, "centene-medicare")


@pytest.mark.parametrize("code", ["11200", "19357", "G0429", "21121"])
def test_centene_non_medicare_member_is_not_applicable(client, code):
    """A-66: only the payer centene-medicare is governed by MC.CP.MP.31."""
    body = post(client, request(code, payer="centene", answers={"I.A.2#eyesight": True}))
    ev = evaluation(body)
    assert ev["determination"] == NOT_APPLICABLE
    assert ev["revision"] is None and ev["criteria"] == []
    assert body["cards"][0]["summary"] == f"NOT_APPLICABLE: no payer policy on file for {code}"
    assert coverage_information(body)["covered"] == "conditional"


@pytest.mark.parametrize("authored, revision", [("2025-07-31", None), ("2025-08-01", PREFIX)])
def test_revision_in_effect_from_2025_08_01(client, authored, revision):
    body = post(client, request("11200", authored=authored, answers={"I.A.2#eyesight": True},
                                qr_authored=date.fromisoformat(authored)))
    ev = evaluation(body)
    assert ev["revision"] == revision
    assert ev["determination"] == (NOT_APPLICABLE if revision is None else SUPPORTED)


def test_unlisted_code_for_medicare_member_is_not_applicable(client):
    assert determination(post(client, request("15780", reasons=("L90.5",)))) == NOT_APPLICABLE


# -- the single I.A alternative (§3.3) ------------------------------------------------------------------------
@pytest.mark.parametrize("code, conditions, chosen", [
    ("11200", [], "I.A.2"),
    ("11201", [], "I.A.2"),
    ("11200", [condition("L91.0", id="c-scar")], "I.A.2"),  # skin-tag codes first, even with a scar
    ("11403", [condition("L91.0", id="c-scar")], "I.A.3"),
    ("11403", [condition(None, snomed="33659008", id="c-keloid")], "I.A.3"),  # SCAR by SNOMED
    ("15220", [condition("L90.5", id="c-scar")], "I.A.3"),
    ("11403", [], "I.A.1"),
    ("11403", [condition("L91.0", id="c-scar", status="resolved")], "I.A.1"),  # not present on T0
    ("19357", [condition("L91.0", id="c-scar")], "I.A.3"),
    ("G0429", [], "I.A.1"),
])
def test_only_one_alternative_applies(client, code, conditions, chosen):
    body = post(client, request(code, reasons=(), conditions=conditions))
    vals = values(body)
    present = [a for a in ("I.A.1", "I.A.2", "I.A.3") if a in vals]
    assert present == [chosen]
    assert evaluation(body)["route"] == "I"


def test_scar_in_reason_code_selects_i_a_3(client):
    body = post(client, request("17110", reasons=("L91.0",), answers={"I.A.3#function": True}))
    assert "I.A.3" in values(body) and determination(body) == SUPPORTED


# -- I.A.2 skin tags (A-62: eyesight OR (friction AND irritation AND bleeding)) -----------------------------
@pytest.mark.parametrize("answers, expected, decisive", [
    ({"I.A.2#eyesight": True}, SUPPORTED, ["I.A.2#eyesight"]),
    ({"I.A.2#eyesight": False, "I.A.2#friction": True, "I.A.2#irritation": True, "I.A.2#bleeding": True}, SUPPORTED,
     ["I.A.2#friction", "I.A.2#irritation", "I.A.2#bleeding"]),
    ({"I.A.2#eyesight": False, "I.A.2#friction": True, "I.A.2#irritation": True, "I.A.2#bleeding": False}, NMN,
     ["I.A.2#eyesight", "I.A.2#bleeding"]),
    ({"I.A.2#eyesight": False, "I.A.2#friction": False, "I.A.2#irritation": True, "I.A.2#bleeding": True}, NMN,
     ["I.A.2#eyesight", "I.A.2#friction"]),
    ({"I.A.2#eyesight": False, "I.A.2#friction": True, "I.A.2#irritation": False, "I.A.2#bleeding": True}, NMN,
     ["I.A.2#irritation"]),
    ({"I.A.2#friction": True, "I.A.2#irritation": True, "I.A.2#bleeding": True, "I.A.2#eyesight": True}, SUPPORTED,
     ["I.A.2#eyesight"]),
    ({"I.A.2#eyesight": False, "I.A.2#friction": True, "I.A.2#irritation": True}, INSUFFICIENT, ["I.A.2#bleeding"]),
    ({"I.A.2#friction": True, "I.A.2#irritation": True, "I.A.2#bleeding": False}, INSUFFICIENT, ["I.A.2#eyesight"]),
])
@pytest.mark.parametrize("code", ["11200", "11201"])
def test_skin_tag_criteria(client, code, answers, expected, decisive):
    body = post(client, request(code, answers=answers))
    assert determination(body) == expected
    assert set(decisive) <= set(deciding(body))
    assert "I.A.2" in deciding(body)


def test_skin_tags_with_nothing_attested_name_every_item(client):
    body = post(client, request("11200"))
    assert determination(body) == INSUFFICIENT
    assert {"I.A.2#eyesight", "I.A.2#friction", "I.A.2#irritation", "I.A.2#bleeding"} <= set(deciding(body))
    detail = body["cards"][0]["detail"]
    assert f"answer Questionnaire item `{PREFIX}/I.A.2#eyesight` (boolean)" in detail
    ci = coverage_information(body)
    assert ci["questionnaire"] == f"{BASE}/Questionnaire/{PREFIX}"
    assert ci["doc-needed"] == "clinical"


def test_stale_skin_tag_attestation_counts_as_unanswered(client):
    """F90: authored in [T0 − 90, today]; T0 − 91 is stale, T0 − 90 still counts."""
    stale = post(client, request("11200", answers={"I.A.2#eyesight": True}, qr_authored=T0 - timedelta(days=91)))
    assert values(stale)["I.A.2#eyesight"] == "UNKNOWN"
    assert "stale" in body_detail(stale)
    fresh = post(client, request("11200", answers={"I.A.2#eyesight": True}, qr_authored=T0 - timedelta(days=90)))
    assert determination(fresh) == SUPPORTED


def body_detail(body) -> str:
    return body["cards"][0]["detail"]


# -- I.A.3 scar / keloid (A-63: (pain AND (infected OR unstable OR friable)) OR function) ---------------------------
SCAR = [condition("L91.0", id="c-keloid")]


@pytest.mark.parametrize("answers, expected", [
    ({"I.A.3#pain": True, "I.A.3#infected": True}, SUPPORTED),
    ({"I.A.3#pain": True, "I.A.3#unstable": True}, SUPPORTED),
    ({"I.A.3#pain": True, "I.A.3#friable": True}, SUPPORTED),
    ({"I.A.3#function": True}, SUPPORTED),
    ({"I.A.3#pain": False, "I.A.3#infected": True, "I.A.3#unstable": True, "I.A.3#function": True}, SUPPORTED),
    ({"I.A.3#pain": True, "I.A.3#infected": False, "I.A.3#unstable": False, "I.A.3#friable": False,
      "I.A.3#function": False}, NMN),
    ({"I.A.3#pain": False, "I.A.3#infected": True, "I.A.3#function": False}, NMN),
    ({"I.A.3#pain": True, "I.A.3#function": False}, INSUFFICIENT),
    ({"I.A.3#infected": True, "I.A.3#function": False}, INSUFFICIENT),
    ({"I.A.3#pain": True, "I.A.3#infected": True, "I.A.3#function": False}, SUPPORTED),
    ({}, INSUFFICIENT),
])
def test_scar_criteria(client, answers, expected):
    body = post(client, request("11406", reasons=("L91.0",), conditions=SCAR, answers=answers or None))
    assert determination(body) == expected
    if expected != SUPPORTED:
        assert "I.A.3" in deciding(body)


def test_scar_pain_without_wound_state_reports_each_missing_item(client):
    body = post(client, request("11406", reasons=("L91.0",), conditions=SCAR, answers={"I.A.3#pain": True}))
    assert determination(body) == INSUFFICIENT
    assert {"I.A.3#infected", "I.A.3#unstable", "I.A.3#friable", "I.A.3#function"} <= set(deciding(body))
    assert "I.A.3#pain" not in deciding(body)  # TRUE under an UNKNOWN root


# -- I.A.1 function after conservative therapy (INT-43) and breast reconstruction (INT-44) -------------------------
FUNCTION_AND_CONSERVATIVE = {"I.A.1#function": True, "I.A.1#conservative": True}


@pytest.mark.parametrize("icd, cause", [
    ("A46", "TRUE"), ("B20", "TRUE"), ("C44.92", "TRUE"), ("E88.1", "TRUE"), ("L30.4", "TRUE"), ("M62.89", "TRUE"),
    ("Q17.3", "TRUE"), ("S01.81XS", "TRUE"), ("T21.31XS", "TRUE"),
    ("R23.4", "UNKNOWN"), ("U07.1", "UNKNOWN"), ("Z98.84", "UNKNOWN"), ("V43.52XS", "UNKNOWN"),
])
def test_cause_is_a_present_icd_code_starting_a_to_q_s_or_t(client, icd, cause):
    body = post(client, request("15830", reasons=(icd,), answers=FUNCTION_AND_CONSERVATIVE))
    assert values(body)["I.A.1#cause"] == cause
    assert determination(body) == (SUPPORTED if cause == "TRUE" else INSUFFICIENT)


def test_cause_from_a_present_condition_and_not_from_a_resolved_one(client):
    present = post(client, request("15830", reasons=(), conditions=[condition("L30.4", id="c-1")],
                                   answers={**FUNCTION_AND_CONSERVATIVE, "II": False}))
    assert values(present)["I.A.1#cause"] == "TRUE" and determination(present) == SUPPORTED
    resolved = post(client, request("15830", reasons=(), conditions=[condition("L30.4", id="c-1", status="resolved")],
                                    answers={**FUNCTION_AND_CONSERVATIVE, "II": False}))
    assert values(resolved)["I.A.1#cause"] == "UNKNOWN"


@pytest.mark.parametrize("answer, expected", [(True, SUPPORTED), (False, NMN)])
def test_cause_attestation_decides_without_a_coded_cause(client, answer, expected):
    body = post(client, request("21121", reasons=("R68.89",), answers={**FUNCTION_AND_CONSERVATIVE, "II": False,
                                                                       "I.A.1#cause": answer}))
    assert values(body)["I.A.1#cause"] == ("TRUE" if answer else "FALSE")
    assert determination(body) == expected


@pytest.mark.parametrize("answers, expected, decisive", [
    ({"I.A.1#function": True, "I.A.1#conservative": True}, SUPPORTED, ["I.A.1#cause", "I.A.1#conservative"]),
    ({"I.A.1#function": True, "I.A.1#conservative": False}, NMN, ["I.A.1#conservative"]),
    ({"I.A.1#function": False, "I.A.1#conservative": True}, NMN, ["I.A.1#function"]),
    ({"I.A.1#function": True}, INSUFFICIENT, ["I.A.1#conservative"]),
])
def test_function_after_failed_conservative_therapy(client, answers, expected, decisive):
    body = post(client, request("15830", reasons=("L30.4",), answers=answers))
    assert determination(body) == expected
    assert set(decisive) <= set(deciding(body))


@pytest.mark.parametrize("code", INT44_CODES)
def test_reconstruction_after_mastectomy_procedure_satisfies_i_a_1(client, code):
    """INT-44 (A-60): a mastectomy Procedure plus an order for a listed code, nothing attested."""
    body = post(client, request(code, reasons=("Z85.3",), procedures=[procedure("19303")]))
    assert values(body)["I.A.1#mastectomy"] == "TRUE"
    assert determination(body) == SUPPORTED
    assert {"I.A.1", "I.A.1#mastectomy"} <= set(deciding(body))


@pytest.mark.parametrize("evidence", [
    {"procedures": [procedure("19301")]},
    {"procedures": [procedure("19305", performed="2009-06-01")]},  # any date
    {"procedures": [procedure("19307")]},
    {"conditions": [condition("Z90.12", id="c-absence")]},
    {"conditions": [condition("Z90.10", id="c-absence")]},
    {"reasons": ("Z42.1",)},
])
def test_mastectomy_evidence(client, evidence):
    kw = {"reasons": ("Z85.3",), **evidence}
    body = post(client, request("19342", **kw))
    assert values(body)["I.A.1#mastectomy"] == "TRUE"
    assert determination(body) == SUPPORTED


@pytest.mark.parametrize("evidence", [
    {"procedures": [procedure("19303", status="in-progress")]},  # only completed Procedures count (§7.1)
    {"procedures": [procedure("19316")]},  # a mastopexy is not a mastectomy
    {"conditions": [condition("Z90.12", id="c-absence", status="resolved")]},
    {"conditions": [condition("C50.911", id="c-bc")]},  # cancer without a mastectomy
])
def test_no_mastectomy_falls_back_to_the_general_intent(client, evidence):
    body = post(client, request("19357", **{"reasons": (), **evidence}))
    vals = values(body)
    assert vals["I.A.1#mastectomy"] == "FALSE"
    assert vals["I.A.1"] == "UNKNOWN"
    assert determination(body) == INSUFFICIENT
    assert {"I.A.1#function", "I.A.1#conservative"} <= set(deciding(body))


def test_mastectomy_rule_only_for_the_int44_codes(client):
    """19328 (implant removal) is not an INT-44 code: the general I.A.1 criteria decide."""
    body = post(client, request("19328", reasons=("Z85.3",), procedures=[procedure("19303")]))
    assert "I.A.1#mastectomy" not in values(body)
    assert determination(body) == INSUFFICIENT


# -- II: solely to improve appearance (A-64, §9.3) ------------------------------------------------------------------
@pytest.mark.parametrize("reasons, conditions, ii", [
    (("Z41.1",), [], "TRUE"),  # the reasonCode is only Z41.1
    (("Z41.1",), [condition("L91.0", id="c-scar")], "TRUE"),  # the order's only reason decides first
    (("Z41.1", "L91.8"), [], "FALSE"),  # not only Z41.1; L91.8 is a disease code
    ((), [condition("C50.911", id="c-bc")], "FALSE"),
    ((), [condition("Z85.3", id="c-hx")], "FALSE"),  # a BREAST-RECON code
    ((), [condition("Z90.12", id="c-abs")], "FALSE"),  # BREAST-RECON (Z90.10–Z90.13)
    ((), [condition("Q17.3", id="c-ear")], "FALSE"),  # congenital
    ((), [condition("S01.81XS", id="c-inj")], "FALSE"),  # injury
    ((), [condition(None, snomed="254837009", id="c-bc")], "FALSE"),  # BREAST-RECON by SNOMED
    ((), [condition("Z41.1", id="c-cos")], "UNKNOWN"),  # a Condition, not the order's reason
    (("R23.8",), [], "UNKNOWN"),  # a symptom code
    ((), [], "UNKNOWN"),
])
def test_ii_when_unanswered(client, reasons, conditions, ii):
    body = post(client, request("11200", reasons=reasons, conditions=conditions, answers={"I.A.2#eyesight": True}))
    assert values(body)["II"] == ii
    assert determination(body) == {"TRUE": NMN, "FALSE": SUPPORTED, "UNKNOWN": INSUFFICIENT}[ii]
    if ii == "TRUE":
        assert deciding(body) == ["II#exclusion", "II"]
    if ii == "UNKNOWN":
        assert "II" in deciding(body)
        assert f"answer Questionnaire item `{PREFIX}/II` (boolean)" in body_detail(body)


def test_appearance_only_excludes_whatever_i_a(client):
    """Root = ALL(NONE(II), I.A): II TRUE makes the order NOT_MEDICALLY_NECESSARY even with I.A unknown."""
    body = post(client, request("15830", reasons=("Z41.1",)))
    vals = values(body)
    assert (vals["II#exclusion"], vals["II"], vals["I.A"]) == ("FALSE", "TRUE", "UNKNOWN")
    assert determination(body) == NMN
    assert "reason" in coverage_information(body) and coverage_information(body)["covered"] == "not-covered"
    assert "MC.CP.MP.31-2025/II" in coverage_information(body)["reason"]["text"]


@pytest.mark.parametrize("reasons, answer, ii", [
    (("Z41.1",), False, "FALSE"),  # the attestation decides before the reason codes
    (("L91.8",), True, "TRUE"),
])
def test_ii_attestation_decides(client, reasons, answer, ii):
    body = post(client, request("11200", reasons=reasons, answers={"II": answer, "I.A.2#eyesight": True}))
    assert values(body)["II"] == ii
    assert determination(body) == (SUPPORTED if ii == "FALSE" else NMN)


def test_stale_ii_answer_counts_as_unanswered(client):
    body = post(client, request("11200", reasons=("L91.8",), answers={"II": True, "I.A.2#eyesight": True},
                                qr_authored=T0 - timedelta(days=91)))
    assert values(body)["II"] == "FALSE"  # derived from L91.8; the stale true answer does not count


def test_supported_root_does_not_list_the_exclusion_member(client):
    body = post(client, request("11200", answers={"I.A.2#eyesight": True}))
    assert determination(body) == SUPPORTED
    assert "II" not in deciding(body)


# -- advisories: MD_REVIEW, PROC_SPECIFIC_POLICY (A-65) -----------------------------------------------------------
@pytest.mark.parametrize("code", HCPCS_CODES)
def test_dermal_filler_codes_add_md_review_without_changing_the_determination(client, code):
    answers = {**FUNCTION_AND_CONSERVATIVE, "II": False}
    body = post(client, request(code, reasons=("E88.1", "B20"), answers=answers))
    assert determination(body) == SUPPORTED
    assert evaluation(body)["advisories"] == ["MD_REVIEW"]
    assert "Advisories: MD_REVIEW" in body_detail(body)
    cpt = post(client, request("15830", reasons=("E88.1", "B20"), answers=answers))
    assert determination(cpt) == SUPPORTED and evaluation(cpt)["advisories"] == []


def test_md_review_code_can_still_be_denied(client):
    body = post(client, request("Q2026", reasons=("Z41.1",)))
    assert determination(body) == NMN
    assert evaluation(body)["advisories"] == ["MD_REVIEW"]


def _app_with_registry(codes):
    return create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW, "PROCEDURE_SPECIFIC_CODES": codes})


def test_procedure_specific_registry_makes_the_code_not_applicable():
    client = _app_with_registry(["15830", "19318"]).test_client()
    body = post(client, request("15830", reasons=("L30.4",), answers=FUNCTION_AND_CONSERVATIVE))
    ev = evaluation(body)
    assert ev["determination"] == NOT_APPLICABLE
    assert ev["advisories"] == ["PROC_SPECIFIC_POLICY"]
    assert deciding(body) == ["APPL"]
    assert values(body) == {"APPL": "FALSE"}
    assert body["cards"][0]["indicator"] == "info"
    assert "PROC_SPECIFIC_POLICY" in body_detail(body)
    ci = coverage_information(body)
    assert (ci["covered"], ci["pa-needed"], ci["info-needed"]) == ("conditional", "conditional", "OTH")
    # a code not in the registry is evaluated as usual
    other = post(client, request("11200", answers={"I.A.2#eyesight": True}))
    assert determination(other) == SUPPORTED and evaluation(other)["advisories"] == []


def test_procedure_specific_registry_is_empty_by_default(client):
    body = post(client, request("15830", reasons=("L30.4",), answers=FUNCTION_AND_CONSERVATIVE))
    assert determination(body) == SUPPORTED
    assert values(body)["APPL"] == "TRUE"
    assert "PROC_SPECIFIC_POLICY" not in evaluation(body)["advisories"]


# -- several orders, questionnaire, data -------------------------------------------------------------------------
def test_each_draft_order_gets_its_own_alternative(client):
    recon = service_request("19357", id="sr-2", reasons=("Z85.3",))
    body = post(client, request("11200", answers={"I.A.2#eyesight": True}, procedures=[procedure("19303")],
                                extra_orders=[recon]))
    assert [evaluation(body, i)["code"] for i in range(2)] == ["11200", "19357"]
    assert "I.A.2" in values(body, 0) and "I.A.1" not in values(body, 0)
    assert "I.A.1#mastectomy" in values(body, 1) and "I.A.2" not in values(body, 1)
    assert [determination(body, i) for i in range(2)] == [SUPPORTED, SUPPORTED]
    assert len(body["systemActions"]) == 2


def test_questionnaire_has_the_contract_items(client):
    resp = client.get(f"/fhir/Questionnaire/{PREFIX}")
    assert resp.status_code == 200
    q = resp.get_json()
    assert q["url"] == f"{BASE}/Questionnaire/{PREFIX}"
    items = {i["linkId"].split("/", 1)[1]: i["type"] for i in q["item"]}
    assert items == {k: "boolean" for k in (
        "II", "I.A.1#cause", "I.A.1#function", "I.A.1#conservative", "I.A.2#eyesight", "I.A.2#friction",
        "I.A.2#irritation", "I.A.2#bleeding", "I.A.3#pain", "I.A.3#infected", "I.A.3#unstable", "I.A.3#friable",
        "I.A.3#function")}
    assert all("code" not in i for i in q["item"])  # all F90


def test_needed_prefetch_keys_only(client):
    """MC.CP.MP.31 reads Conditions, Procedures and attestations only (no age): other keys may be missing."""
    req = request("11200", answers={"I.A.2#eyesight": True})
    for key in ("patient", "observations", "encounters", "medicationRequests", "allergies", "devices", "deviceRequests",
                "diagnosticReports"):
        del req["prefetch"][key]
    assert determination(post(client, req)) == SUPPORTED
    del req["prefetch"]["procedures"]
    assert client.post("/cds-services/order-sign-crd", json=req).status_code == 412
