"""CP.MP.190 rev 01/23 boundaries, end to end through ``POST /cds-services/order-sign-crd``.

Each test builds a minimal request (tests/builders.py), posts it, and reads the card's
``extension["cds-coverage.evaluation"]`` (determination, deciding, criteria) and the
systemAction's coverage-information.  T0 = 2025-06-01 unless stated; R = T0 (INT-01).
Contract sections are cited as §n; interpretations as INT-nn.
"""
from __future__ import annotations

from datetime import date

import pytest

from builders import (
    PRACTITIONER, T0, after, before, condition, coverage_information, deciding, device_request, encounter,
    evaluation, hematocrit, organization, oximetry, pao2, request, spo2, value_of,
)

SUPPORTED = "SUPPORTED"
NMN = "NOT_MEDICALLY_NECESSARY"
INSUFFICIENT = "INSUFFICIENT_DOCUMENTATION"
NOT_APPLICABLE = "NOT_APPLICABLE"
QUESTIONNAIRE = "http://example.org/fhir/cds-coverage/Questionnaire/CP.MP.190-2023"

ADULT = {"I.E": True}
HF_EDEMA = [condition("I50.9", id="c-hf"), condition("R60.0", id="c-edema")]
CHILD_BIRTH = "2015-01-01"  # age 10 on T0
IDTF = organization("org-idtf", idtf=True)


def post(client, req) -> dict:
    resp = client.post("/cds-services/order-sign-crd", json=req)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def determination(body) -> str:
    return evaluation(body)["determination"]


def adult(observations=(), *, answers=None, **kw) -> dict:
    """An adult initial E1390 order with I.A (COPD reason) and I.E (attested) met."""
    return request(observations=observations, questionnaire_answers=ADULT if answers is None else answers, **kw)


# -- Group I / Group II thresholds (I.B.1.a, I.B.2.a; INT-06) -----------------------------
@pytest.mark.parametrize("mmhg, group1, expected", [(55, "TRUE", SUPPORTED), (56, "FALSE", NMN)])
def test_pao2_at_rest_group1_boundary(client, mmhg, group1, expected):
    body = post(client, adult([pao2(mmhg, T0, id="abg")]))
    assert value_of(body, "I.B.1.a") == group1
    assert determination(body) == expected
    if mmhg == 56:  # in the Group II range, but no Group II finding
        assert value_of(body, "I.B.2.a") == "TRUE"
        assert value_of(body, "I.B.2.b") == "FALSE"


def test_pao2_56_with_heart_failure_and_edema_is_group2(client):
    body = post(client, adult([pao2(56, T0, id="abg")], conditions=HF_EDEMA))
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert value_of(body, "I.B.2.a") == "TRUE"
    assert value_of(body, "I.B.2.b.i") == "TRUE"
    assert determination(body) == SUPPORTED
    assert "I.B.2" in deciding(body) and "I.B.1.a" not in deciding(body)


@pytest.mark.parametrize("mmhg, group2, expected", [
    (55, "FALSE", SUPPORTED),  # INT-06: 55 < x — 55 is Group I, not Group II
    (59, "TRUE", SUPPORTED),
    (60, "FALSE", NMN),
])
def test_pao2_group2_range_is_above_55_through_59(client, mmhg, group2, expected):
    body = post(client, adult([pao2(mmhg, T0, id="abg")], conditions=HF_EDEMA))
    assert value_of(body, "I.B.2.a") == group2
    assert determination(body) == expected


@pytest.mark.parametrize("kpa", [7.33, 7.333])  # 54.98 and 55.002, both 55.0 rounded to 0.1
def test_pao2_in_kpa_converts_to_55_0_and_qualifies(client, kpa):
    body = post(client, adult([pao2(kpa, T0, unit="kPa", id="abg")]))
    assert value_of(body, "I.B.1.a") == "TRUE"
    assert "Observation/abg" in next(c for c in evaluation(body)["criteria"] if c["id"].endswith("/I.B.1.a"))["evidence"]
    assert determination(body) == SUPPORTED


def test_pao2_in_kpa_7_34_converts_to_55_1_which_is_group2_not_group1(client):
    body = post(client, adult([pao2(7.34, T0, unit="kPa", id="abg")], conditions=HF_EDEMA))  # 55.05 → 55.1
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert value_of(body, "I.B.2.a") == "TRUE"
    assert determination(body) == SUPPORTED
    without = post(client, adult([pao2(7.34, T0, unit="kPa", id="abg")]))
    assert value_of(without, "I.B.1.a") == "FALSE"
    assert determination(without) == NMN


def test_pao2_in_a_non_ucum_unit_is_ignored(client):
    body = post(client, adult([pao2(50, T0, unit="mmHg", id="abg")]))  # §5.2: other unit → ignored
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert value_of(body, "I.B") == "UNKNOWN"  # INT-10: no valid test
    assert determination(body) == INSUFFICIENT


@pytest.mark.parametrize("sat, group1, group2a, expected", [
    (88, "TRUE", "TRUE", SUPPORTED),
    (89, "FALSE", "TRUE", NMN),  # Group II saturation, but no Group II finding
])
def test_spo2_88_is_group1_and_89_only_group2(client, sat, group1, group2a, expected):
    body = post(client, adult([spo2(sat, T0, id="sat")]))
    assert value_of(body, "I.B.1.a") == group1
    assert value_of(body, "I.B.2.a") == group2a
    assert determination(body) == expected


@pytest.mark.parametrize("sat, group2a, expected", [(89, "TRUE", SUPPORTED), (90, "FALSE", NMN)])
def test_spo2_group2_boundary_with_heart_failure_and_edema(client, sat, group2a, expected):
    body = post(client, adult([spo2(sat, T0, id="sat")], conditions=HF_EDEMA))
    assert value_of(body, "I.B.2.a") == group2a
    assert value_of(body, "I.B.2.b.i") == "TRUE"
    assert determination(body) == expected


def test_heart_failure_without_edema_lets_the_attestation_decide(client):
    obs = [spo2(89, T0, id="sat")]
    unanswered = post(client, adult(obs, conditions=[condition("I50.9", id="c-hf")]))
    assert value_of(unanswered, "I.B.2.b.i") == "UNKNOWN"
    assert determination(unanswered) == INSUFFICIENT
    attested = post(client, adult(obs, conditions=[condition("I50.9", id="c-hf")],
                                  answers={"I.E": True, "I.B.2.b.i": True}))
    assert value_of(attested, "I.B.2.b.i") == "TRUE"
    assert determination(attested) == SUPPORTED


def test_condition_with_onset_after_t0_is_not_present(client):
    late_hf = condition("I50.9", onset=after(1), id="c-hf")
    body = post(client, adult([spo2(89, T0, id="sat")], conditions=[late_hf, condition("R60.0", id="c-edema")]))
    assert value_of(body, "I.B.2.b.i") == "UNKNOWN"  # only EDEMA present → the attestation decides


@pytest.mark.parametrize("status", ["preliminary", "registered", "cancelled"])
def test_observation_not_final_is_ignored(client, status):
    body = post(client, adult([spo2(88, T0, id="sat", status=status)]))
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert determination(body) == INSUFFICIENT


# -- hematocrit (I.B.2.b.iii; INT-18) ---------------------------------------------------
@pytest.mark.parametrize("hct, iii, expected", [(56.0, "FALSE", NMN), (56.1, "TRUE", SUPPORTED)])
def test_hematocrit_must_be_greater_than_56(client, hct, iii, expected):
    body = post(client, adult([spo2(89, T0, id="sat"), hematocrit(hct, before(5), id="hct")]))
    assert value_of(body, "I.B.2.b.iii") == iii
    assert determination(body) == expected


@pytest.mark.parametrize("days, iii, expected", [(90, "TRUE", SUPPORTED), (91, "FALSE", NMN)])
def test_hematocrit_window_is_t0_minus_90(client, days, iii, expected):
    body = post(client, adult([spo2(89, T0, id="sat"), hematocrit(58, before(days), id="hct")]))
    assert value_of(body, "I.B.2.b.iii") == iii
    assert determination(body) == expected


def test_stale_hematocrit_with_erythrocytosis_is_unknown(client):
    body = post(client, adult([spo2(89, T0, id="sat"), hematocrit(58, before(91), id="hct")],
                              conditions=[condition("D75.1", id="c-erythro")]))
    iii = next(c for c in evaluation(body)["criteria"] if c["id"].endswith("/I.B.2.b.iii"))
    assert iii["value"] == "UNKNOWN"
    assert "hematocrit" in iii["resolution"].lower()
    assert determination(body) == INSUFFICIENT


def test_latest_hematocrit_in_window_decides(client):
    obs = [spo2(89, T0, id="sat"), hematocrit(58, before(30), id="hct-old"), hematocrit(55, before(2), id="hct-new")]
    body = post(client, adult(obs))
    assert value_of(body, "I.B.2.b.iii") == "FALSE"
    assert determination(body) == NMN


@pytest.mark.parametrize("hct, unit, iii", [
    (0.561, "1", "TRUE"),
    (0.561, "L/L", "TRUE"),
    (0.56, "L/L", "FALSE"),  # 56.0 after × 100, not > 56
    (0.56, "1", "FALSE"),
    (56.1, "g/dL", "FALSE"),  # other unit → ignored → no Hct, no ERYTHRO → FALSE
])
def test_hematocrit_fraction_units_are_scaled_by_100(client, hct, unit, iii):
    body = post(client, adult([spo2(89, T0, id="sat"), hematocrit(hct, before(3), unit=unit, id="hct")]))
    assert value_of(body, "I.B.2.b.iii") == iii
    assert determination(body) == (SUPPORTED if iii == "TRUE" else NMN)


# -- age and route (§2.3, §3.1 /ROUTE, §13.10) ----------------------------------------------
@pytest.mark.parametrize("birth, route, section_leaf", [
    ("2004-06-01", "I", "I.B.1.a"),  # 21st birthday on T0: 21
    ("2004-06-02", "II", "II.B.2"),  # one day short: 20
])
def test_age_21_on_the_birthday_routes_to_section_I(client, birth, route, section_leaf):
    body = post(client, adult([spo2(88, T0, id="sat")], birth_date=birth, answers={"I.E": True}))
    ev = evaluation(body)
    assert ev["route"] == route
    assert value_of(body, "ROUTE") == "TRUE"
    assert value_of(body, section_leaf) == "TRUE"
    other = "II.B.2" if route == "I" else "I.B.1.a"
    assert value_of(body, other) is None
    assert ev["determination"] == SUPPORTED


def test_missing_birth_date_is_insufficient_with_route_unknown(client):
    body = post(client, adult([spo2(88, T0, id="sat")], birth_date=None))
    ev = evaluation(body)
    assert ev["determination"] == INSUFFICIENT
    assert ev["route"] is None
    route = next(c for c in ev["criteria"] if c["id"] == "CP.MP.190-2023/ROUTE")
    assert route["value"] == "UNKNOWN"
    assert "birthDate" in route["resolution"]
    assert "ROUTE" in deciding(body)
    assert "birthDate" in body["cards"][0]["detail"]  # §13.10: the card asks for the birth date
    ci = coverage_information(body)
    assert ci["covered"] == "conditional"
    assert ci["doc-needed"] == "clinical"
    assert "questionnaire" not in ci  # the birth date is not a Questionnaire item


@pytest.mark.parametrize("birth, route", [
    ("1960", "I"),
    ("2004-05", "I"),  # every day of May 2004 gives 21 on 2025-06-01
    ("2005", "II"),  # every day of 2005 gives 19 or 20
    ("2004", None),  # 2004-01-01 → 21, 2004-12-31 → 20: cannot decide
    ("2004-06", None),  # 2004-06-01 → 21, 2004-06-02 → 20
])
def test_partial_birth_date_decides_only_when_unambiguous(client, birth, route):
    body = post(client, adult([spo2(88, T0, id="sat")], birth_date=birth))
    ev = evaluation(body)
    assert ev["route"] == route
    if route is None:
        assert value_of(body, "ROUTE") == "UNKNOWN"
        assert ev["determination"] == INSUFFICIENT
    else:
        assert value_of(body, "ROUTE") == "TRUE"
        assert ev["determination"] == SUPPORTED


# -- attestation freshness (§9.2 F90) -----------------------------------------------------
@pytest.mark.parametrize("days, ie, expected", [(90, "TRUE", SUPPORTED), (91, "UNKNOWN", INSUFFICIENT)])
def test_f90_attestation_authored_t0_minus_90_counts_and_91_is_stale(client, days, ie, expected):
    body = post(client, adult([spo2(88, T0, id="sat")], qr_authored=before(days)))
    assert value_of(body, "I.E") == ie
    assert determination(body) == expected
    if ie == "UNKNOWN":
        assert "I.E" in deciding(body)
        assert "stale" in body["cards"][0]["detail"]  # §9.2: the card says the answer is stale
        assert body["cards"][0]["indicator"] == "warning"
        ci = coverage_information(body)
        assert ci["covered"] == "conditional"
        assert ci["questionnaire"] == QUESTIONNAIRE  # an attestable deciding leaf


# -- re-authorization (§8, §7.2 physician evaluation) --------------------------------------
PRIOR = device_request("dr-initial", "E1390", authored="2025-03-01")


def eval_visit(days_before_r: int, participant: str = PRACTITIONER) -> dict:
    d = before(days_before_r)
    return encounter("enc-eval", "AMB", d, d, participant)


@pytest.mark.parametrize("days, eval_value, expected", [(90, "TRUE", SUPPORTED), (91, "UNKNOWN", INSUFFICIENT)])
def test_reauth_physician_evaluation_window_is_r_minus_90(client, days, eval_value, expected):
    req = request(prior_request=PRIOR, encounters=[eval_visit(days)], questionnaire_answers={"III.A.1": True})
    body = post(client, req)
    ev = evaluation(body)
    assert ev["route"] == "III"
    assert ev["r"] == T0.isoformat()
    assert value_of(body, "III.A#eval") == eval_value
    assert ev["determination"] == expected


def test_reauth_evaluation_by_another_practitioner_does_not_count(client):
    req = request(prior_request=PRIOR, encounters=[eval_visit(10, "Practitioner/someone-else")],
                  questionnaire_answers={"III.A.1": True})
    body = post(client, req)
    assert value_of(body, "III.A#eval") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT


@pytest.mark.parametrize("days, eval_value, expected", [(90, "TRUE", SUPPORTED), (91, "FALSE", NMN)])
def test_reauth_attested_evaluation_date_outside_window_is_false(client, days, eval_value, expected):
    # §13.12: an attested date outside its window is FALSE (known and late), not UNKNOWN.
    answers = {"III.A.1": True, "III.A#eval": date.fromisoformat(before(days))}
    body = post(client, request(prior_request=PRIOR, questionnaire_answers=answers))
    assert value_of(body, "III.A#eval") == eval_value
    assert determination(body) == expected


@pytest.mark.parametrize("days, eval_value, expected", [(30, "TRUE", SUPPORTED), (31, "UNKNOWN", INSUFFICIENT)])
def test_pediatric_reauth_evaluation_window_is_r_minus_30(client, days, eval_value, expected):
    req = request(birth_date=CHILD_BIRTH, reason_codes=["E84.0"], prior_request=PRIOR,
                  encounters=[eval_visit(days)], questionnaire_answers={"IV.B.2": True})
    body = post(client, req)
    assert evaluation(body)["route"] == "IV"
    assert value_of(body, "IV.A") == eval_value
    assert determination(body) == expected


@pytest.mark.parametrize("days, new_test, expected", [(90, "TRUE", SUPPORTED), (91, "UNKNOWN", INSUFFICIENT)])
def test_reauth_group1_new_test_window_is_r_minus_90(client, days, new_test, expected):
    answers = {"ROUTE#initial-group": 1, "III.A.1": False}
    req = request(prior_request=PRIOR, encounters=[eval_visit(10)], questionnaire_answers=answers,
                  observations=[spo2(88, before(days), id="sat-new")])
    body = post(client, req)
    assert value_of(body, "III.A#eval") == "TRUE"
    assert value_of(body, "III.A.3.a") == new_test
    assert value_of(body, "III.A.3.b") is None  # not the member's group
    assert determination(body) == expected


@pytest.mark.parametrize("days, new_test, expected", [(30, "TRUE", SUPPORTED), (31, "UNKNOWN", INSUFFICIENT)])
def test_reauth_group2_new_test_window_is_r_minus_30(client, days, new_test, expected):
    answers = {"ROUTE#initial-group": 2, "III.A.1": False}
    req = request(prior_request=PRIOR, encounters=[eval_visit(10)], questionnaire_answers=answers,
                  observations=[spo2(89, before(days), id="sat-new")], conditions=HF_EDEMA)
    body = post(client, req)
    assert value_of(body, "III.A.3.b") == new_test
    assert value_of(body, "III.A.3.a") is None
    assert determination(body) == expected


@pytest.mark.parametrize("initial_sat, group, leaf", [(88, 1, "III.A.3.a"), (89, 2, "III.A.3.b")])
def test_reauth_initial_group_derived_from_the_test_before_the_prior_request(client, initial_sat, group, leaf):
    # §8: unanswered ROUTE#initial-group → the latest valid test on or before the prior request's authoredOn.
    obs = [spo2(initial_sat, "2025-02-20", id="sat-initial"), spo2(initial_sat, before(20), id="sat-new")]
    req = request(prior_request=PRIOR, encounters=[eval_visit(10)], observations=obs,
                  conditions=HF_EDEMA, questionnaire_answers={"III.A.1": False})
    body = post(client, req)
    assert value_of(body, leaf) == "TRUE"
    other = "III.A.3.b" if group == 1 else "III.A.3.a"
    assert value_of(body, other) is None
    assert determination(body) == SUPPORTED


@pytest.mark.parametrize("prior, route", [
    (PRIOR, "III"),  # priorRequest references an oxygen DeviceRequest
    ("DeviceRequest/not-on-file", "III"),  # an unresolvable reference also counts
    (device_request("dr-cpap", "E0601", authored="2025-03-01"), "I"),  # not oxygen
])
def test_reauthorization_detected_by_prior_request(client, prior, route):
    req = request(prior_request=prior, observations=[spo2(88, T0, id="sat")],
                  questionnaire_answers={"I.E": True, "III.A.1": True})
    ev = evaluation(post(client, req))
    assert ev["route"] == route
    assert ev["r"] == (T0.isoformat() if route == "III" else None)


def test_reauthorization_attested_without_prior_request(client):
    req = request(observations=[spo2(88, T0, id="sat")],
                  questionnaire_answers={"ROUTE#reauthorization": True, "III.A.1": True})
    assert evaluation(post(client, req))["route"] == "III"


# -- data scope (§4.2) ----------------------------------------------------------------------
@pytest.mark.parametrize("days, group1, expected", [(365, "TRUE", SUPPORTED), (366, "FALSE", INSUFFICIENT)])
def test_observations_before_t0_minus_365_are_ignored(client, days, group1, expected):
    body = post(client, adult([spo2(88, before(days), id="sat")]))
    assert value_of(body, "I.B.1.a") == group1
    assert determination(body) == expected
    if expected == INSUFFICIENT:
        assert value_of(body, "I.B") == "UNKNOWN"  # INT-10: no valid test


# -- setting: inpatient two-day rule, stable state (§7.2, §13.14) --------------------------------
DISCHARGE = before(5)
STAY = encounter("enc-stay", "IMP", before(12), DISCHARGE)


def inpatient_spo2(value, days_before_discharge, **kw):
    return spo2(value, before(5 + days_before_discharge), encounter="Encounter/enc-stay", **kw)


@pytest.mark.parametrize("days, setting, expected", [(2, "TRUE", SUPPORTED), (3, "UNKNOWN", INSUFFICIENT)])
def test_inpatient_test_must_be_within_two_days_of_discharge(client, days, setting, expected):
    body = post(client, adult([inpatient_spo2(88, days, id="sat")], encounters=[STAY]))
    assert value_of(body, "I.D.1") == setting
    assert determination(body) == expected
    if expected == INSUFFICIENT:
        assert value_of(body, "I.B.1.a") == "FALSE"
        assert value_of(body, "I.B") == "UNKNOWN"


def test_inpatient_test_that_is_not_the_latest_of_its_context_is_invalid(client):
    obs = [inpatient_spo2(88, 2, id="sat-early"), inpatient_spo2(92, 1, id="sat-late")]
    body = post(client, adult(obs, encounters=[STAY]))
    # The 88 % is ignored; the latest resting test (92 %) is valid and does not qualify.
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert determination(body) == NMN


def test_inpatient_later_test_of_another_context_does_not_invalidate(client):
    obs = [inpatient_spo2(88, 2, id="sat-rest"), inpatient_spo2(93, 1, context="EXERCISE", id="sat-walk")]
    body = post(client, adult(obs, encounters=[STAY]))
    assert value_of(body, "I.B.1.a") == "TRUE"
    assert value_of(body, "I.D.1") == "TRUE"
    assert determination(body) == SUPPORTED


def test_inpatient_stay_without_end_uses_t0_and_flags_provisional_discharge(client):
    stay = encounter("enc-stay", "IMP", before(4), None, status="in-progress")
    body = post(client, adult([spo2(88, before(1), encounter="Encounter/enc-stay", id="sat")], encounters=[stay]))
    ev = evaluation(body)
    assert value_of(body, "I.D.1") == "TRUE"
    assert ev["determination"] == SUPPORTED
    assert "PROVISIONAL_DISCHARGE" in ev["advisories"]


def test_emergency_encounter_test_is_invalid(client):
    er = encounter("enc-er", "EMER", before(2), before(2))
    body = post(client, adult([spo2(86, before(2), encounter="Encounter/enc-er", id="sat")], encounters=[er]))
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert value_of(body, "I.D.2") == "UNKNOWN"
    assert value_of(body, "I.B") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT


@pytest.mark.parametrize("onset_days, group1, expected", [(30, "FALSE", INSUFFICIENT), (31, "TRUE", SUPPORTED)])
def test_acute_respiratory_condition_within_30_days_makes_test_unstable(client, onset_days, group1, expected):
    exacerbation = condition("J44.1", onset=before(onset_days), id="c-aecopd")
    body = post(client, adult([spo2(88, T0, id="sat")], conditions=[exacerbation]))
    assert value_of(body, "I.B.1.a") == group1
    assert determination(body) == expected


def test_acute_respiratory_condition_abated_before_the_test_does_not_matter(client):
    resolved = condition("J18.9", onset=before(20), clinical_status="resolved", abatement=before(5), id="c-pna")
    body = post(client, adult([spo2(88, T0, id="sat")], conditions=[resolved]))
    assert value_of(body, "I.B.1.a") == "TRUE"
    assert determination(body) == SUPPORTED


def test_idtf_performer_establishes_stable_state_without_encounter(client):
    obs = [spo2(88, T0, performer="Organization/org-idtf", encounter=None, id="sat")]
    body = post(client, adult(obs, organizations=[IDTF]))
    assert value_of(body, "I.D.2") == "TRUE"
    assert determination(body) == SUPPORTED


def test_no_encounter_and_no_idtf_needs_stable_state_attestation(client):
    obs = [spo2(88, T0, encounter=None, id="sat")]
    unknown = post(client, adult(obs))
    assert value_of(unknown, "I.D.2") == "UNKNOWN"
    assert value_of(unknown, "I.B") == "UNKNOWN"
    assert determination(unknown) == INSUFFICIENT
    attested = post(client, adult(obs, answers={"I.E": True, "I.D.2": True}))
    assert value_of(attested, "I.D.2") == "TRUE"
    assert determination(attested) == SUPPORTED


# -- performer (§7.3) ------------------------------------------------------------------------
@pytest.mark.parametrize("taxonomy", ["332B00000X", "332BX2000X"])
def test_dme_performer_invalidates_an_adult_initial_test(client, taxonomy):
    dme = organization("org-dme", nucc=taxonomy)
    obs = [spo2(88, T0, performer="Organization/org-dme", id="sat")]
    body = post(client, adult(obs, organizations=[dme]))
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert value_of(body, "I.C") == "UNKNOWN"
    assert value_of(body, "I.B") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT


def test_dme_performer_is_fine_under_21(client):
    dme = organization("org-dme", nucc="332B00000X")
    obs = [spo2(88, T0, performer="Organization/org-dme", id="sat")]
    body = post(client, request(birth_date=CHILD_BIRTH, reason_codes=["E84.0"], observations=obs,
                                organizations=[dme]))
    assert evaluation(body)["route"] == "II"
    assert value_of(body, "II.B.2") == "TRUE"
    assert determination(body) == SUPPORTED


def test_performer_class_falls_back_to_the_encounter_service_provider(client):
    dme = organization("org-dme", nucc="332B00000X")
    visit = encounter("enc-dme-visit", "AMB", T0, T0, service_provider="Organization/org-dme")
    obs = [spo2(88, T0, performer=None, encounter="Encounter/enc-dme-visit", id="sat")]
    body = post(client, adult(obs, encounters=[visit], organizations=[dme]))
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert value_of(body, "I.C") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT


@pytest.mark.parametrize("performer", [None, "Practitioner/not-on-file"])
def test_unresolvable_performer_leaves_validity_unknown(client, performer):
    obs = [spo2(88, T0, performer=performer, id="sat")]  # the visit encounter has no serviceProvider
    body = post(client, adult(obs))
    assert value_of(body, "I.B.1.a") == "UNKNOWN"
    assert value_of(body, "I.C") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT


@pytest.mark.parametrize("days, new_test, expected", [(30, "TRUE", SUPPORTED), (31, "UNKNOWN", INSUFFICIENT)])
def test_pediatric_reauth_new_test_window_is_r_minus_30(client, days, new_test, expected):
    req = request(birth_date=CHILD_BIRTH, reason_codes=["E84.0"], prior_request=PRIOR,
                  encounters=[eval_visit(5)], observations=[spo2(90, before(days), id="sat-new")])
    body = post(client, req)
    assert evaluation(body)["route"] == "IV"
    assert value_of(body, "IV.B.1.a") == new_test
    assert determination(body) == expected


@pytest.mark.parametrize("taxonomy, value, advisory", [
    ("332B00000X", "FALSE", False),  # a DME company alone
    ("332BX2000X", "UNKNOWN", True),  # a home oxygen provider: medical-director review
])
def test_pediatric_reauth_test_by_dme_company(client, taxonomy, value, advisory):
    dme = organization("org-dme", nucc=taxonomy)
    req = request(birth_date=CHILD_BIRTH, reason_codes=["E84.0"], prior_request=PRIOR, encounters=[eval_visit(5)],
                  observations=[spo2(90, before(3), performer="Organization/org-dme", id="sat-new")],
                  organizations=[dme], questionnaire_answers={"IV.B.2": False})
    body = post(client, req)
    assert value_of(body, "IV.B.1.b") == value
    assert ("MD_REVIEW" in evaluation(body)["advisories"]) is advisory
    assert determination(body) == (NMN if value == "FALSE" else INSUFFICIENT)


@pytest.mark.parametrize("latest, baseline, expected", [(91, "TRUE", SUPPORTED), (92, "FALSE", NMN)])
def test_pediatric_baseline_saturation_below_92_uses_the_latest_resting_value(client, latest, baseline, expected):
    obs = [spo2(88, before(40), id="sat-old"), spo2(latest, before(3), id="sat-latest")]  # INT-21
    body = post(client, request(birth_date=CHILD_BIRTH, reason_codes=["E84.0"], observations=obs,
                                questionnaire_answers={"II.B.3": False}))
    assert value_of(body, "II.B.2") == baseline
    assert determination(body) == expected


# -- oxygen status (§5.4) and 51733-4 (INT-24) -------------------------------------------------
@pytest.mark.parametrize("o2, group1, expected", [
    ("on", "FALSE", INSUFFICIENT),  # ON_O2 never qualifies (and is not a valid test)
    (None, "TRUE", SUPPORTED),  # UNKNOWN status is presumed room air (INT-16)
    ("room", "TRUE", SUPPORTED),
])
def test_oxygen_status_of_the_test(client, o2, group1, expected):
    body = post(client, adult([spo2(85, T0, o2=o2, id="sat")]))
    assert value_of(body, "I.B.1.a") == group1
    assert determination(body) == expected


def test_on_oxygen_test_does_not_qualify_under_21_either(client):
    body = post(client, request(birth_date=CHILD_BIRTH, reason_codes=["E84.0"],
                                observations=[spo2(85, T0, o2="on", id="sat")]))
    assert value_of(body, "II.B") == "UNKNOWN"  # the only test is invalid (INT-10)
    assert determination(body) == INSUFFICIENT


@pytest.mark.parametrize("at, group1, expected", [
    ("09:00", "FALSE", NMN),  # shares the instant of the measured 92 %: 51733-4 ignored
    ("09:05", "TRUE", SUPPORTED),
])
def test_51733_4_is_used_only_without_a_measured_sat_at_the_same_instant(client, at, group1, expected):
    obs = [spo2(92, T0, at="09:00", id="sat-measured"), spo2(88, T0, at=at, code="51733-4", id="sat-derived")]
    body = post(client, adult(obs))
    assert value_of(body, "I.B.1.a") == group1
    assert determination(body) == expected


# -- overnight oximetry (§5.6, INT-08) ---------------------------------------------------------
def night(components, nadir=84):
    return oximetry(nadir, before(10), components, id="oxi", performer="Organization/org-idtf", encounter=None)


@pytest.mark.parametrize("components, sleep, expected", [
    ({"minutes-spo2-le-88": 5.0, "minutes-spo2-drop-gt-5": 0}, "TRUE", SUPPORTED),
    ({"minutes-spo2-le-88": 4.9, "minutes-spo2-drop-gt-5": 0}, "FALSE", NMN),
    ({"minutes-spo2-le-88": 0, "minutes-spo2-drop-gt-5": 0}, "FALSE", NMN),  # explicit 0 means FALSE
    ({"minutes-spo2-drop-gt-5": 0}, "UNKNOWN", INSUFFICIENT),  # absent: a nadir alone cannot prove it
])
def test_overnight_oximetry_needs_five_cumulative_minutes(client, components, sleep, expected):
    body = post(client, adult([night(components)], organizations=[IDTF]))
    assert value_of(body, "I.B.1.b") == sleep
    assert determination(body) == expected
    if sleep == "UNKNOWN":
        crit = next(c for c in evaluation(body)["criteria"] if c["id"].endswith("/I.B.1.b"))
        assert "minutes-spo2-le-88" in crit["resolution"]


def test_oximetry_with_nadir_above_88_and_no_duration_is_false(client):
    body = post(client, adult([night({"minutes-spo2-drop-gt-5": 0}, nadir=90)], organizations=[IDTF]))
    assert value_of(body, "I.B.1.b") == "FALSE"


@pytest.mark.parametrize("code", ["E1392", "E0431"])
def test_sleep_only_qualification_denies_portable_oxygen(client, code):
    obs = [spo2(92, before(10), id="sat-awake"), night({"minutes-spo2-le-88": 12, "minutes-spo2-drop-gt-5": 0})]
    body = post(client, adult(obs, order_code=code, organizations=[IDTF], answers={"I.E": True, "I.F.1": True}))
    assert value_of(body, "I.B.1.b") == "TRUE"
    assert value_of(body, "I.F.1") == "TRUE"
    assert value_of(body, "I.F.2") == "FALSE"
    assert determination(body) == NMN
    assert ("LESSER_COST" in evaluation(body)["advisories"]) is (code == "E1392")  # 2023: E1392, not E0431
    assert body["cards"][0]["indicator"] == "warning"
    assert "I.F.2" in deciding(body)
    assert "I.B.1.b" not in deciding(body)
    ci = coverage_information(body)
    assert ci["covered"] == "not-covered"
    assert "pa-needed" not in ci
    assert "I.F.2" in ci["reason"]["text"]


def test_same_sleep_only_qualification_supports_stationary_oxygen(client):
    obs = [spo2(92, before(10), id="sat-awake"), night({"minutes-spo2-le-88": 12, "minutes-spo2-drop-gt-5": 0})]
    body = post(client, adult(obs, order_code="E1390", organizations=[IDTF]))
    assert value_of(body, "I.B.1.b") == "TRUE"
    assert value_of(body, "I.F.2") is None  # I.F applies to portable orders only
    assert determination(body) == SUPPORTED


def test_portable_oxygen_with_a_resting_qualifying_test_meets_i_f_2(client):
    body = post(client, adult([spo2(88, T0, id="sat")], order_code="E0431", answers={"I.E": True, "I.F.1": True}))
    assert value_of(body, "I.F.2") == "TRUE"
    assert determination(body) == SUPPORTED


def test_pediatric_sleep_only_with_portable_has_no_sleep_only_rule(client):
    # INT-16: under 21, no sleep-only portable rule; II.C (mobility) is the only portable criterion.
    obs = [spo2(95, before(10), id="sat-awake"), night({"minutes-spo2-le-88": 12})]
    body = post(client, request(order_code="E0431", birth_date=CHILD_BIRTH, reason_codes=["E84.0"],
                                observations=obs, organizations=[IDTF],
                                questionnaire_answers={"II.B.3": True, "II.C": True}))
    ev = evaluation(body)
    assert ev["route"] == "II"
    assert value_of(body, "II.C") == "TRUE"
    assert value_of(body, "II.B.2") == "FALSE"
    assert value_of(body, "II.B.3") == "TRUE"
    assert not any(c["id"].split("/", 1)[1].startswith("I.F") for c in ev["criteria"])
    assert ev["determination"] == SUPPORTED


# -- exercise and improvement on O2 (I.B.1.d; INT-17) -------------------------------------------
def walk(on_o2_value, *, on_o2_date=None):
    return [
        spo2(93, before(7), at="09:50", id="sat-rest"),
        spo2(85, before(7), context="EXERCISE", at="10:00", id="sat-walk-ra"),
        spo2(on_o2_value, on_o2_date or before(7), context="EXERCISE", o2="on", at="10:10", id="sat-walk-o2"),
    ]


@pytest.mark.parametrize("on_o2, improve, expected", [(90, "TRUE", SUPPORTED), (85, "FALSE", NMN)])
def test_exercise_improvement_needs_a_strictly_higher_on_o2_value(client, on_o2, improve, expected):
    body = post(client, adult(walk(on_o2)))
    assert value_of(body, "I.B.1.d#exercise") == "TRUE"
    assert value_of(body, "I.B.1.d#improve") == improve
    assert value_of(body, "I.B.1.d") == improve
    assert determination(body) == expected


def test_exercise_improvement_in_another_session_falls_back_to_the_attestation(client):
    body = post(client, adult(walk(92, on_o2_date=before(3))))
    assert value_of(body, "I.B.1.d#improve") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT
    attested = post(client, adult(walk(92, on_o2_date=before(3)), answers={"I.E": True, "I.B.1.d#improve": True}))
    assert value_of(attested, "I.B.1.d#improve") == "TRUE"
    assert determination(attested) == SUPPORTED


def test_after_exercise_value_in_the_same_session_as_exercise_counts_as_exercise(client):
    # §5.3: 255214003 is EXERCISE in the same session as a during-exercise value (INT-11).
    obs = [
        spo2(90, before(7), context="EXERCISE", at="10:00", id="sat-walk"),
        spo2(87, before(7), context="AFTER_EXERCISE", at="10:07", id="sat-post"),
        spo2(93, before(7), context="EXERCISE", o2="on", at="10:20", id="sat-walk-o2"),
    ]
    body = post(client, adult(obs))
    assert value_of(body, "I.B.1.d#exercise") == "TRUE"
    assert value_of(body, "I.B.1.d#improve") == "TRUE"
    assert determination(body) == SUPPORTED


def test_after_exercise_value_without_an_exercise_session_is_unused(client):
    # §5.3: otherwise the context is UNKNOWN and the test is unused (INT-12) → no valid test (INT-10).
    body = post(client, adult([spo2(87, before(7), context="AFTER_EXERCISE", id="sat-post")]))
    assert value_of(body, "I.B.1.d#exercise") == "FALSE"
    assert value_of(body, "I.B") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT


def test_test_without_context_is_unused(client):
    body = post(client, adult([spo2(85, T0, context=None, id="sat")]))  # INT-12
    assert value_of(body, "I.B.1.a") == "FALSE"
    assert value_of(body, "I.B") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT


def test_qualifying_test_of_unknown_validity_makes_the_block_unknown(client):
    # §5.5 step 2: a valid negative test does not make the block FALSE while a test of
    # unknown validity (stable state not established) qualifies.
    obs = [spo2(93, before(20), id="sat-valid"), spo2(87, T0, encounter=None, id="sat-unknown")]
    body = post(client, adult(obs))
    assert value_of(body, "I.B.1.a") == "UNKNOWN"
    assert value_of(body, "I.B") == "UNKNOWN"
    assert determination(body) == INSUFFICIENT


# -- section V (INT-22, INT-23) -------------------------------------------------------------------
def test_angina_as_only_indication_without_hypoxemia_is_not_medically_necessary(client):
    body = post(client, adult([spo2(93, T0, id="sat")], reason_codes=["I20.9"]))
    assert value_of(body, "V.A") == "TRUE"
    assert value_of(body, "V") == "FALSE"
    assert determination(body) == NMN
    assert "V" in deciding(body) and "V.A" in deciding(body)
    assert "V.B" not in deciding(body)


def test_angina_that_is_not_the_order_indication_is_not_excluded(client):
    # The order's reasonCode (COPD) is the indication; a present angina Condition is not (§3.1, INT-22).
    body = post(client, adult([spo2(93, T0, id="sat")], conditions=[condition("I20.9", id="c-angina")]))
    assert value_of(body, "V.A") == "FALSE"
    assert "V.A" not in deciding(body)


def test_angina_with_qualifying_hypoxemia_is_not_excluded(client):
    body = post(client, adult([spo2(88, T0, id="sat")], reason_codes=["I20.9"], answers={"I.E": True, "I.A": True}))
    assert value_of(body, "V.A") == "FALSE"
    assert determination(body) == SUPPORTED


# -- section VI: cluster headache (§3.1) -----------------------------------------------------------
@pytest.mark.parametrize("attacks, a1, expected", [(5, "TRUE", SUPPORTED), (4, "FALSE", NMN)])
def test_cluster_headache_only_routes_to_vi_and_needs_five_attacks(client, attacks, a1, expected):
    req = request(order_code="E0424", reason_codes=["G44.009"],
                  questionnaire_answers={"VI.A.1": attacks, "VI.A.2.a": True})
    body = post(client, req)
    ev = evaluation(body)
    assert ev["route"] == "VI"
    assert value_of(body, "VI.A.1") == a1
    assert ev["determination"] == expected
    if expected == NMN:
        assert "VI.A.1" in deciding(body)


def test_cluster_headache_only_with_a_concentrator_is_not_section_vi_equipment(client):
    req = request(order_code="E1390", reason_codes=["G44.009"],
                  questionnaire_answers={"VI.A.1": 6, "VI.A.2.a": True})
    body = post(client, req)
    assert evaluation(body)["route"] == "VI"
    assert value_of(body, "VI#equipment") == "FALSE"
    assert determination(body) == NMN


def test_cluster_headache_with_an_oxygen_indication_is_not_section_vi(client):
    req = request(order_code="E0424", reason_codes=["G44.009", "J44.9"], observations=[spo2(88, T0, id="sat")],
                  questionnaire_answers={"I.E": True, "VI.A.1": 5, "VI.A.2.a": True})
    ev = evaluation(post(client, req))
    assert ev["route"] == "I"


# -- not applicable (§3.1, A-26) -----------------------------------------------------------------
def test_oximeter_e0445_is_not_applicable(client):
    body = post(client, adult([spo2(88, T0, id="sat")], order_code="E0445"))
    card = body["cards"][0]
    assert card["extension"]["cds-coverage.evaluation"]["determination"] == NOT_APPLICABLE
    assert card["summary"].startswith("NOT_APPLICABLE")
    assert card["indicator"] == "info"
    ci = coverage_information(body)
    assert ci["covered"] == "conditional"
    assert ci["pa-needed"] == "conditional"
    assert ci["info-needed"] == "OTH"
    assert ci["reason"]["text"] == "No payer policy on file governs this order"


# -- deciding criteria (§10.1) and coverage-information (§10.2) ------------------------------------
def test_deciding_under_a_true_root_lists_no_exclusion_members(client):
    body = post(client, adult([spo2(88, T0, id="sat")]))
    dec = deciding(body)
    assert determination(body) == SUPPORTED
    assert {"I", "I.A", "I.B", "I.B.1", "I.B.1.a", "I.E"} <= set(dec)
    assert not {"V.A", "V.B", "V.C", "V.D"} & set(dec)
    assert not {"I.B.1.b", "I.B.2", "I.B.2.a"} & set(dec)  # not on a TRUE path
    ci = coverage_information(body)
    assert ci["covered"] == "covered"
    assert ci["pa-needed"] == "no-auth"
    assert "reason" not in ci


def test_deciding_under_a_false_root_follows_false_nodes_only(client):
    body = post(client, adult([spo2(89, T0, id="sat")]))  # Group II saturation, no finding
    dec = deciding(body)
    assert determination(body) == NMN
    assert {"I", "I.B", "I.B.1", "I.B.1.a", "I.B.2", "I.B.2.b"} <= set(dec)
    assert "I.A" not in dec and "I.E" not in dec and "I.B.2.a" not in dec
    assert "V" not in dec


def test_deciding_under_an_unknown_root_names_the_unknown_leaf(client):
    body = post(client, adult([spo2(88, T0, id="sat")], answers={}))  # I.E unanswered
    dec = deciding(body)
    assert determination(body) == INSUFFICIENT
    assert "I.E" in dec
    assert "I.B.1.a" not in dec  # TRUE: not deciding an UNKNOWN root
    crit = next(c for c in evaluation(body)["criteria"] if c["id"].endswith("/I.E"))
    assert "CP.MP.190-2023/I.E" in crit["resolution"]
    ci = coverage_information(body)
    assert ci["covered"] == "conditional" and ci["info-needed"] == "OTH"
    assert ci["questionnaire"] == QUESTIONNAIRE


def test_coverage_information_date_is_today_not_t0(client):
    ci = coverage_information(post(client, adult([spo2(88, T0, id="sat")], authored=after(0))))
    assert ci["date"] == "2025-12-31"  # FIXED_NOW
