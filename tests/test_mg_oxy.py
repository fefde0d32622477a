"""MassHealth MG-OXY 06/24 (prefix MG-OXY-2024) through the service: boundaries and MassHealth-specific rules.

Requests are the CP.MP.190 builders' requests with the payer identifier ``masshealth``, attestations under
the MG-OXY-2024 prefix, and a prescription that specifies flow rate and hours per day (II.A.2.p3).
Default member: adult (born 1960) with COPD (J44.9), T0 = 2025-06-01, MD requester, tests at an
ambulatory visit (chronic stable state) on room air.
"""
from __future__ import annotations

import pytest

from builders import (
    HCPCS, LOINC, T0, before, concept, condition, device_request, encounter, evaluation,
    oximetry, pao2, qty, questionnaire_response, request, spo2, value_of,
)

MG = "MG-OXY-2024"
SERVICE = "/cds-services/order-sign-crd"
COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
CH_ALL = {"II.A.1.d.i.A": 7, "II.A.1.d.i.B": True, "II.A.1.d.i.C": True, "II.A.1.d.i.D": True,
          "II.A.1.d.i.E": True, "III.B.7.ii": True}
CHILD = "2015-01-01"  # age 10 on T0


def _order(req: dict, index: int = 0) -> dict:
    return req["context"]["draftOrders"]["entry"][index]["resource"]


def prescription(order: dict, flow: float | None = 2, hours: float | None = 24) -> None:
    params = []
    if flow is not None:
        params.append({"code": concept(LOINC, "3151-8"), "valueQuantity": qty(flow, "L/min")})
    if hours is not None:
        params.append({"code": {"text": "hours per day"}, "valueQuantity": qty(hours, "h/d")})
    order["parameter"] = params


def mg_request(order_code: str = "E1390", *, answers: dict | None = None, flow: float | None = 2,
               hours: float | None = 24, plan: dict | None = None, **kw) -> dict:
    """A MassHealth order-sign request (payer ``masshealth``) with MG-OXY attestations."""
    qrs = list(kw.pop("questionnaire_responses", ()))
    if answers:
        qrs.insert(0, questionnaire_response(answers, kw.get("authored") or T0, prefix=MG))
    req = request(order_code, payer="masshealth", questionnaire_responses=qrs, **kw)
    prescription(_order(req), flow, hours)
    if plan is not None:
        req["prefetch"]["coverage"]["entry"][0]["resource"]["class"] = [plan]
    return req


def add_draft(req: dict, code: str, id: str) -> dict:
    """A second draft DeviceRequest in the same order-sign."""
    second = dict(_order(req), id=id, codeCodeableConcept=concept(HCPCS, code))
    req["context"]["draftOrders"]["entry"].append({"resource": second})
    return second


def post(client, req: dict) -> dict:
    resp = client.post(SERVICE, json=req)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def determination(body: dict, index: int = 0) -> str:
    return evaluation(body, index)["determination"]


def deciding(body: dict, index: int = 0) -> list[str]:
    return [d.split("/", 1)[1] for d in evaluation(body, index)["deciding"]]


def advisories(body: dict, index: int = 0) -> list[str]:
    return evaluation(body, index)["advisories"]


def resolution(body: dict, short_id: str, index: int = 0) -> str:
    for c in evaluation(body, index)["criteria"]:
        if c["id"] == f"{MG}/{short_id}":
            return c.get("resolution", "")
    raise AssertionError(f"{short_id} not evaluated")


# -- baseline --------------------------------------------------------------------------------
def test_adult_copd_resting_spo2_88_room_air_is_supported(client):
    body = post(client, mg_request(observations=[spo2(88, before(7))]))
    ev = evaluation(body)
    assert ev["revision"] == MG and ev["payer"] == "masshealth"
    assert determination(body) == "SUPPORTED"
    for node in ("II.A.1.a.i", "II.A.2.a.i", "II.A.2.p1", "II.A.2.p2", "II.A.2.p3", "II.A.2.p5", "II.A.2.p6", "AppA.A"):
        assert node in deciding(body), node
        assert f"`{MG}/{node}`" in body["cards"][0]["detail"]
    assert body["cards"][0]["summary"].startswith("SUPPORTED: E1390 stationary oxygen")
    assert "MG-OXY rev 06/24" in body["cards"][0]["summary"]


def test_masshealth_coverage_information_needs_prior_authorization(client):
    from builders import coverage_information

    ci = coverage_information(post(client, mg_request(observations=[spo2(88, before(7))])))
    assert ci["covered"] == "covered" and ci["pa-needed"] == "auth-needed"


# -- pediatric thresholds (II.A.2.d) ------------------------------------------------------------
@pytest.mark.parametrize("value,expected,node_value", [
    (65, "SUPPORTED", "TRUE"),
    (66, "NOT_MEDICALLY_NECESSARY", "FALSE"),
])
def test_pediatric_pao2_65_qualifies_66_does_not(client, value, expected, node_value):
    body = post(client, mg_request(birth_date=CHILD, reason_codes=["P27.1"], observations=[pao2(value, before(10))]))
    assert determination(body) == expected
    assert value_of(body, "II.A.2.d.i") == node_value
    assert value_of(body, "II.A.2.a.iii#test") == "FALSE"  # 56–59 only at rest; 65/66 are above it
    assert "II.A.2.d.i" in deciding(body)


@pytest.mark.parametrize("value,expected,node_value", [
    (90, "SUPPORTED", "TRUE"),
    (91, "NOT_MEDICALLY_NECESSARY", "FALSE"),
])
def test_pediatric_spo2_90_qualifies_91_does_not(client, value, expected, node_value):
    body = post(client, mg_request(birth_date=CHILD, reason_codes=["E84.0"], observations=[spo2(value, before(10))]))
    assert determination(body) == expected
    assert value_of(body, "II.A.2.d.ii") == node_value
    assert value_of(body, "II.A.1.a.iii") == "TRUE"  # cystic fibrosis


def test_pediatric_thresholds_stop_on_the_21st_birthday(client):
    turned_21 = post(client, mg_request(birth_date="2004-06-01", observations=[spo2(90, before(10))]))
    assert determination(turned_21) == "NOT_MEDICALLY_NECESSARY"
    assert value_of(turned_21, "II.A.2.d") is None  # the pediatric criterion is omitted for adults
    still_20 = post(client, mg_request(birth_date="2004-06-02", observations=[spo2(90, before(10))]))
    assert determination(still_20) == "SUPPORTED"
    assert "II.A.2.d.ii" in deciding(still_20)


def test_pediatric_value_without_birth_date_is_insufficient(client):
    body = post(client, mg_request(birth_date=None, observations=[spo2(90, before(10))]))
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert value_of(body, "II.A.2.d.ii") == "UNKNOWN"
    assert "birthDate" in resolution(body, "II.A.2.d.ii")


def test_pediatric_sleep_value_needs_five_minutes_at_90(client):
    def run(minutes):
        night = oximetry(86, before(12), {"minutes-spo2-le-90": minutes})
        return post(client, mg_request("E1390", birth_date=CHILD, reason_codes=["P27.1"],
                                       observations=[spo2(93, before(12)), night]))

    assert value_of(run(5.0), "II.A.2.d.ii") == "TRUE"
    assert value_of(run(4.9), "II.A.2.d.ii") == "FALSE"


# -- adult thresholds (II.A.2.a; A-04: "89%" means ≤ 89) ------------------------------------------
@pytest.mark.parametrize("value,a_i,a_iii_test", [(88, "TRUE", "TRUE"), (89, "FALSE", "TRUE"), (90, "FALSE", "FALSE")])
def test_adult_saturation_thresholds(client, value, a_i, a_iii_test):
    body = post(client, mg_request(observations=[spo2(value, before(10))]))
    assert value_of(body, "II.A.2.a.i") == a_i
    assert value_of(body, "II.A.2.a.iii#test") == a_iii_test
    assert value_of(body, "II.A.2.d") is None
    assert determination(body) == ("SUPPORTED" if a_i == "TRUE" else "NOT_MEDICALLY_NECESSARY")


@pytest.mark.parametrize("value,a_i,a_iii_test", [(55, "TRUE", "FALSE"), (56, "FALSE", "TRUE"), (59, "FALSE", "TRUE"), (60, "FALSE", "FALSE")])
def test_adult_pao2_thresholds(client, value, a_i, a_iii_test):
    body = post(client, mg_request(observations=[pao2(value, before(10))]))
    assert value_of(body, "II.A.2.a.i") == a_i
    assert value_of(body, "II.A.2.a.iii#test") == a_iii_test


def test_adult_spo2_89_with_heart_failure_and_edema_qualifies_under_a_iii(client):
    body = post(client, mg_request(observations=[spo2(89, before(10))],
                                   conditions=[condition("I50.32"), condition("R60.0")]))
    assert determination(body) == "SUPPORTED"
    assert {"II.A.2.a.iii", "II.A.2.a.iii#test", "II.A.2.a.iii.A"} <= set(deciding(body))


def test_adult_spo2_89_with_hematocrit_57_qualifies_under_a_iii_c(client):
    from builders import hematocrit

    body = post(client, mg_request(observations=[spo2(89, before(10)), hematocrit(57, before(20))]))
    assert determination(body) == "SUPPORTED"
    assert value_of(body, "II.A.2.a.iii.C") == "TRUE"


def test_a_iii_is_measured_at_rest(client):
    body = post(client, mg_request(observations=[spo2(94, before(10)), spo2(89, before(10), "EXERCISE", at="10:00")],
                                   conditions=[condition("I50.32"), condition("R60.0")]))
    assert value_of(body, "II.A.2.a.iii#test") == "FALSE"


def test_sleep_criterion_needs_five_minutes(client):
    def run(minutes):
        # the drop component is recorded (0): an absent duration component would be unknown, not zero (§5.6)
        night = oximetry(85, before(12), {"minutes-spo2-le-88": minutes, "minutes-spo2-drop-gt-5": 0})
        return post(client, mg_request(observations=[spo2(93, before(12)), night]))

    five = run(5.0)
    assert determination(five) == "SUPPORTED"
    assert value_of(five, "II.A.2.a.ii#sleep") == "TRUE" and value_of(five, "II.A.2.b.ii.B.1") == "TRUE"
    assert determination(run(4.9)) == "NOT_MEDICALLY_NECESSARY"


def test_sleep_nadir_alone_cannot_prove_five_minutes(client):
    body = post(client, mg_request(observations=[spo2(93, before(12)), oximetry(84, before(12))]))
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert value_of(body, "II.A.2.a.ii#sleep") == "UNKNOWN"


def test_sleep_drop_associated_with_obstructive_sleep_apnea(client):
    night = oximetry(90, before(12), {"minutes-spo2-le-88": 0, "minutes-spo2-drop-gt-5": 22})
    body = post(client, mg_request(observations=[spo2(95, before(12)), night], reason_codes=["G47.33"]))
    assert determination(body) == "SUPPORTED"
    assert value_of(body, "II.A.2.b.ii.B.3#assoc") == "TRUE"
    assert value_of(body, "II.A.2.b.ii.B.3") == "TRUE"


def test_exercise_desaturation_improved_on_oxygen_with_continuous_order_raises_freq_mismatch(client):
    obs = [spo2(94, before(6)), spo2(85, before(6), "EXERCISE", at="10:00"), spo2(92, before(6), "EXERCISE", "on", at="10:10")]
    body = post(client, mg_request(observations=obs))
    assert determination(body) == "SUPPORTED"
    assert {"II.A.2.b.i#exercise", "II.A.2.b.ii.A"} <= set(deciding(body))
    assert "FREQ_MISMATCH" in advisories(body)
    part_time = post(client, mg_request(observations=obs, hours=8))
    assert "FREQ_MISMATCH" not in advisories(part_time)


# -- the 90-day window (II.A.2.p6) ------------------------------------------------------------------
def test_test_dated_t0_minus_90_counts(client):
    body = post(client, mg_request(observations=[spo2(85, before(90))]))
    assert determination(body) == "SUPPORTED"
    assert value_of(body, "II.A.2.p6") == "TRUE"


def test_test_dated_t0_minus_91_does_not_count(client):
    body = post(client, mg_request(observations=[spo2(85, before(91))]))
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert value_of(body, "II.A.2.p6") == "UNKNOWN"
    assert {"II.A.2.p6", "II.A.2#valid-test"} <= set(deciding(body))
    assert "2025-03-03" in resolution(body, "II.A.2#valid-test")  # T0 − 90


def test_out_of_window_qualifying_test_with_a_valid_negative_is_not_medically_necessary(client):
    body = post(client, mg_request(observations=[spo2(85, before(91)), spo2(94, before(5))]))
    assert determination(body) == "NOT_MEDICALLY_NECESSARY"


def test_no_test_at_all_is_insufficient(client):
    body = post(client, mg_request())
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert "II.A.2#valid-test" in deciding(body)


# -- room air (II.A.2.p1, §5.4, §13.3) --------------------------------------------------------------
def test_qualifying_value_with_unknown_oxygen_status_is_insufficient(client):
    body = post(client, mg_request(observations=[spo2(85, before(10), o2=None)]))
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert value_of(body, "II.A.2.p1") == "UNKNOWN"
    assert "II.A.2.p1" in deciding(body)
    assert "3151-8" in resolution(body, "II.A.2.p1")


def test_non_qualifying_value_with_unknown_oxygen_status_is_not_a_valid_negative(client):
    body = post(client, mg_request(observations=[spo2(94, before(10), o2=None)]))
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert {"II.A.2.p1", "II.A.2#valid-test"} <= set(deciding(body))
    with_room_air = post(client, mg_request(observations=[spo2(94, before(10), o2=None), spo2(95, before(8))]))
    assert determination(with_room_air) == "NOT_MEDICALLY_NECESSARY"


def test_room_air_by_loinc_59410_1_and_by_fio2(client):
    by_code = spo2(86, before(10), o2=None, code="59410-1")
    body = post(client, mg_request(observations=[by_code]))
    assert determination(body) == "SUPPORTED"
    fio2 = spo2(86, before(10), o2=None)
    fio2["component"] = [{"code": concept(LOINC, "3150-0"), "valueQuantity": qty(21, "%")}]
    assert determination(post(client, mg_request(observations=[fio2]))) == "SUPPORTED"


@pytest.mark.parametrize("contraindicated,expected", [
    (None, "INSUFFICIENT_DOCUMENTATION"),
    (True, "SUPPORTED"),
    (False, "INSUFFICIENT_DOCUMENTATION"),
])
def test_on_oxygen_counts_only_with_room_air_contraindicated(client, contraindicated, expected):
    answers = {"II.A.2.p1#contraindicated": contraindicated} if contraindicated is not None else None
    body = post(client, mg_request(observations=[spo2(86, before(10), o2="on")], answers=answers))
    assert determination(body) == expected
    if contraindicated is None:
        assert "II.A.2.p1#contraindicated" in resolution(body, "II.A.2.p1")
        assert value_of(body, "II.A.2.a.i") == "UNKNOWN"
    if contraindicated is False:
        assert value_of(body, "II.A.2.a.i") == "FALSE"  # the test is not counted
        assert "II.A.2#valid-test" in deciding(body)


# -- setting (II.A.2.p4, II.A.2.p5) ------------------------------------------------------------------
def test_test_in_emergency_encounter_is_not_a_stable_state(client):
    body = post(client, mg_request(observations=[spo2(85, before(5), encounter="Encounter/er")],
                                   encounters=[encounter("er", "EMER", before(5), before(5))]))
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert value_of(body, "II.A.2.p5") == "UNKNOWN"


def test_stable_state_attested_when_no_encounter(client):
    obs = [spo2(85, before(5), encounter=None)]
    unknown = post(client, mg_request(observations=obs))
    assert determination(unknown) == "INSUFFICIENT_DOCUMENTATION"
    assert "II.A.2.p5" in resolution(unknown, "II.A.2.p5")
    attested = post(client, mg_request(observations=obs, answers={"II.A.2.p5": True}))
    assert determination(attested) == "SUPPORTED"


def test_stable_state_is_not_applied_to_acute_short_conditions(client):
    obs = [spo2(86, before(3), encounter="Encounter/er")]
    encs = [encounter("er", "EMER", before(3), before(3))]
    body = post(client, mg_request(reason_codes=["J18.9"], observations=obs, encounters=encs))
    assert determination(body) == "SUPPORTED"
    assert value_of(body, "II.A.2.p5") is None
    assert value_of(body, "II.A.1.c.iv") == "TRUE"
    assert "AUTH_LT6M" in advisories(body) and "AUTH_12M" not in advisories(body)


def test_inpatient_test_within_two_days_of_discharge(client):
    stay = encounter("ip", "IMP", before(10), before(2))
    ok = post(client, mg_request(observations=[spo2(86, before(3), encounter="Encounter/ip")], encounters=[stay]))
    assert determination(ok) == "SUPPORTED"
    assert value_of(ok, "II.A.2.p4") == "TRUE"
    early = post(client, mg_request(observations=[spo2(86, before(5), encounter="Encounter/ip")], encounters=[stay]))
    assert determination(early) == "INSUFFICIENT_DOCUMENTATION"
    assert value_of(early, "II.A.2.p4") == "UNKNOWN"


def test_inpatient_test_must_be_the_latest_of_its_context(client):
    stay = encounter("ip", "IMP", before(10), before(2))
    obs = [spo2(86, before(3), encounter="Encounter/ip", at="08:00"), spo2(93, before(2), encounter="Encounter/ip", at="07:00")]
    body = post(client, mg_request(observations=obs, encounters=[stay]))
    assert determination(body) == "NOT_MEDICALLY_NECESSARY"


def test_inpatient_without_discharge_date_is_provisional(client):
    stay = encounter("ip", "IMP", before(6), None, status="in-progress")
    body = post(client, mg_request(observations=[spo2(86, before(1), encounter="Encounter/ip")], encounters=[stay]))
    assert determination(body) == "SUPPORTED"
    assert "PROVISIONAL_DISCHARGE" in advisories(body)


# -- prescription (II.A.2.p2, II.A.2.p3) ---------------------------------------------------------------
@pytest.mark.parametrize("qualifications,expected", [
    (["NP"], "TRUE"), (["PA"], "TRUE"), (["CNS"], "TRUE"), (["DO"], "TRUE"), (["RN"], "FALSE"), ([], "TRUE"),
])
def test_prescriber_qualification(client, qualifications, expected):
    req = mg_request(observations=[spo2(86, before(5))])
    practitioner = next(e["resource"] for e in req["prefetch"]["observations"]["entry"]
                        if e["resource"]["resourceType"] == "Practitioner")
    practitioner["qualification"] = [{"code": concept("http://terminology.hl7.org/CodeSystem/v2-0360", q)} for q in qualifications]
    body = post(client, req)
    assert value_of(body, "II.A.2.p2") == expected
    assert determination(body) == ("SUPPORTED" if expected == "TRUE" else "NOT_MEDICALLY_NECESSARY")


def test_prescription_must_state_flow_rate_and_hours(client):
    no_flow = post(client, mg_request(observations=[spo2(86, before(5))], flow=None))
    assert determination(no_flow) == "INSUFFICIENT_DOCUMENTATION"
    assert value_of(no_flow, "II.A.2.p3") == "UNKNOWN"
    assert "L/min" in resolution(no_flow, "II.A.2.p3")
    req = mg_request(observations=[spo2(86, before(5))], hours=None)
    assert value_of(post(client, req), "II.A.2.p3") == "UNKNOWN"
    _order(req)["occurrenceTiming"] = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}
    assert determination(post(client, req)) == "SUPPORTED"
    no_dx = post(client, mg_request(observations=[spo2(86, before(5))], reason_codes=[]))
    assert value_of(no_dx, "II.A.2.p3") == "UNKNOWN"


# -- plan exclusions (APPL) ------------------------------------------------------------------------------
@pytest.mark.parametrize("plan", ["ACPP", "MCO", "ICO", "SCO", "PACE"])
@pytest.mark.parametrize("field", ["value", "name"])
def test_masshealth_contracted_plans_are_not_applicable(client, plan, field):
    klass = {"type": concept(COVERAGE_CLASS, "plan"), "value": "X-PLAN", "name": "Some plan"}
    klass[field] = plan
    body = post(client, mg_request(observations=[spo2(86, before(5))], plan=klass))
    assert determination(body) == "NOT_APPLICABLE"
    assert deciding(body) == ["APPL"]
    assert body["cards"][0]["indicator"] == "info"


def test_other_plan_classes_are_governed(client):
    standard = {"type": concept(COVERAGE_CLASS, "plan"), "value": "STANDARD", "name": "MassHealth Standard"}
    assert determination(post(client, mg_request(observations=[spo2(86, before(5))], plan=standard))) == "SUPPORTED"
    group_mco = {"type": concept(COVERAGE_CLASS, "group"), "value": "MCO"}
    assert determination(post(client, mg_request(observations=[spo2(86, before(5))], plan=group_mco))) == "SUPPORTED"


# -- Appendix A ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["E0425", "E0440", "E1405", "E0441", "E0443", "E0445", "E0433", "E0430"])
def test_codes_outside_appendix_a_are_not_applicable(client, code):
    body = post(client, mg_request(code, observations=[spo2(86, before(5))]))
    assert determination(body) == "NOT_APPLICABLE"
    assert body["cards"][0]["summary"] == f"NOT_APPLICABLE: no payer policy on file for {code}"


@pytest.mark.parametrize("code", ["E0424", "E0439", "E1390", "E1391"])
def test_stationary_appendix_a_codes(client, code):
    body = post(client, mg_request(code, observations=[spo2(86, before(5))]))
    assert determination(body) == "SUPPORTED"
    assert value_of(body, "AppA.A") == "TRUE" and value_of(body, "AppA.B") is None


def test_k0738_requires_e1390(client):
    alone = post(client, mg_request("K0738", observations=[spo2(86, before(5))], answers={"III.B.5": True}))
    assert determination(alone) == "NOT_MEDICALLY_NECESSARY"
    assert "AppA.B#k0738" in deciding(alone)

    req = mg_request("K0738", observations=[spo2(86, before(5))], answers={"III.B.5": True})
    add_draft(req, "E1390", "dr-concentrator")
    body = post(client, req)
    assert [determination(body, i) for i in range(2)] == ["SUPPORTED", "SUPPORTED"]
    assert value_of(body, "AppA.B#k0738") == "TRUE"

    active = post(client, mg_request("K0738", observations=[spo2(86, before(5))], answers={"III.B.5": True},
                                     device_requests=[device_request("dr-old", "E1390")]))
    assert determination(active) == "SUPPORTED"
    ended = post(client, mg_request("K0738", observations=[spo2(86, before(5))], answers={"III.B.5": True},
                                    device_requests=[device_request("dr-old", "E1390", status="completed")]))
    assert determination(ended) == "NOT_MEDICALLY_NECESSARY"


def test_only_one_portable_system(client):
    other = device_request("dr-liquid", "E0434")
    body = post(client, mg_request("E0431", observations=[spo2(86, before(5))], answers={"III.B.5": True},
                                   device_requests=[other]))
    assert determination(body) == "NOT_MEDICALLY_NECESSARY"
    assert "AppA.B#single" in deciding(body)
    replacing = post(client, mg_request("E0431", observations=[spo2(86, before(5))], answers={"III.B.5": True},
                                        prior_request=other))
    assert determination(replacing) == "SUPPORTED"


@pytest.mark.parametrize("answer,expected", [(None, "INSUFFICIENT_DOCUMENTATION"), (False, "NOT_MEDICALLY_NECESSARY"), (True, "SUPPORTED")])
def test_portable_needs_activities_beyond_the_stationary_system(client, answer, expected):
    answers = {"III.B.5": answer} if answer is not None else None
    body = post(client, mg_request("E0434", observations=[spo2(86, before(5))], answers=answers))
    assert determination(body) == expected
    if answer is not True:
        assert "III.B.5" in deciding(body)


def test_portable_concentrator_needs_portable_criteria_and_time_away(client):
    obs = [spo2(86, before(5))]
    missing = post(client, mg_request("E1392", observations=obs, answers={"III.B.5": True}))
    assert determination(missing) == "INSUFFICIENT_DOCUMENTATION"
    assert "AppA.C.2" in deciding(missing)
    assert "AppA.C" in resolution(missing, "AppA.C.2")
    ok = post(client, mg_request("E1392", observations=obs, answers={"III.B.5": True, "AppA.C": True}))
    assert determination(ok) == "SUPPORTED"
    assert {"AppA.B", "AppA.C", "AppA.C.2"} <= set(deciding(ok))


# -- II.B.7 and the difference from Centene ---------------------------------------------------------------
def _sleep_only_child(payer_request, code="E0431", **answers):
    night = oximetry(84, before(15), {"minutes-spo2-le-88": 12, "minutes-spo2-le-90": 30})
    return payer_request(code, birth_date="2016-03-01", reason_codes=["P27.1"],
                         observations=[spo2(91, before(20)), night], **answers)


def test_sleep_only_pediatric_portable_masshealth_vs_centene(client):
    masshealth = post(client, _sleep_only_child(mg_request, answers={"III.B.5": True}))
    assert determination(masshealth) == "NOT_MEDICALLY_NECESSARY"
    assert deciding(masshealth) == ["II", "II.B", "II.B.7"]
    centene = post(client, _sleep_only_child(request, questionnaire_answers={"II.C": True}))
    assert evaluation(centene)["revision"] == "CP.MP.190-2023"
    assert determination(centene) == "SUPPORTED"  # INT-16: no sleep-only portable rule under 21


def test_sleep_only_stationary_is_covered(client):
    body = post(client, _sleep_only_child(mg_request, "E1390"))
    assert determination(body) == "SUPPORTED"
    assert value_of(body, "II.B.7") is None


def test_portable_with_an_awake_qualifying_test_is_not_excluded(client):
    night = oximetry(84, before(15), {"minutes-spo2-le-88": 12})
    body = post(client, mg_request("E0431", observations=[spo2(87, before(20)), night], answers={"III.B.5": True}))
    assert determination(body) == "SUPPORTED"
    assert value_of(body, "II.B.7") == "FALSE"


def test_unknown_room_air_status_masshealth_vs_centene(client):
    obs = [spo2(85, before(10), o2=None)]
    assert determination(post(client, mg_request(observations=obs))) == "INSUFFICIENT_DOCUMENTATION"
    centene = post(client, request(observations=obs, questionnaire_answers={"I.E": True}))
    assert determination(centene) == "SUPPORTED"  # INT-16: presumed room air


def test_no_performer_rule_masshealth_vs_centene(client):
    from builders import organization

    dme = organization("org-dme", "332B00000X")
    obs = [spo2(85, before(10), performer="Organization/org-dme")]
    assert determination(post(client, mg_request(observations=obs, organizations=[dme]))) == "SUPPORTED"
    centene = post(client, request(observations=obs, organizations=[dme], questionnaire_answers={"I.E": True}))
    assert determination(centene) != "SUPPORTED"


def test_old_test_masshealth_vs_centene_initial_order(client):
    obs = [spo2(85, before(120))]
    assert determination(post(client, mg_request(observations=obs))) == "INSUFFICIENT_DOCUMENTATION"
    assert determination(post(client, request(observations=obs, questionnaire_answers={"I.E": True}))) == "SUPPORTED"


# -- cluster headache (II.A.1.d, II.A.2.c, II.B.9; §13.6, INT-30) ------------------------------------------------
def ch_request(answers, code="E0424", reasons=("G44.009",), **kw):
    return mg_request(code, reason_codes=list(reasons), answers=answers, hours=2, flow=12, **kw)


def test_cluster_headache_meeting_ichd3_is_supported_without_tests(client):
    body = post(client, ch_request(CH_ALL))
    assert determination(body) == "SUPPORTED"
    assert {"II.A.1.d", "II.A.1.d.i", "II.A.1.d.i.A", "II.A.1.d.i.E", "II.A.2.c", "III.B.7.ii"} <= set(deciding(body))
    assert advisories(body) == ["AUTH_LT6M"]


@pytest.mark.parametrize("item", ["II.A.1.d.i.B", "II.A.1.d.i.C", "II.A.1.d.i.D", "II.A.1.d.i.E"])
def test_cluster_headache_any_ichd3_criterion_false_is_excluded_by_ii_b_9(client, item):
    body = post(client, ch_request({**CH_ALL, item: False}))
    assert determination(body) == "NOT_MEDICALLY_NECESSARY"
    assert "II.B.9" in deciding(body)
    assert value_of(body, "II.A.1.d") == "FALSE"


@pytest.mark.parametrize("attacks,expected", [(4, "NOT_MEDICALLY_NECESSARY"), (5, "SUPPORTED")])
def test_cluster_headache_needs_five_attacks(client, attacks, expected):
    body = post(client, ch_request({**CH_ALL, "II.A.1.d.i.A": attacks}))
    assert determination(body) == expected


def test_cluster_headache_criteria_unanswered_is_insufficient(client):
    answers = dict(CH_ALL)
    del answers["II.A.1.d.i.C"]
    body = post(client, ch_request(answers))
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert "II.A.1.d.i.C" in resolution(body, "II.A.1.d.i.C#attested")
    assert value_of(body, "II.B.9") == "UNKNOWN"


def test_cluster_headache_history_counts_at_any_date(client):
    old = questionnaire_response({k: v for k, v in CH_ALL.items() if k != "III.B.7.ii"}, "2022-01-10", prefix=MG)
    body = post(client, ch_request({"III.B.7.ii": True}, questionnaire_responses=[old]))
    assert determination(body) == "SUPPORTED"


def test_cluster_headache_needs_attack_documentation(client):
    answers = dict(CH_ALL)
    del answers["III.B.7.ii"]
    body = post(client, ch_request(answers))
    assert determination(body) == "INSUFFICIENT_DOCUMENTATION"
    assert "III.B.7.ii" in deciding(body)
    # answered false: II.A.2.c is FALSE; with no oxygen test on file the other findings stay UNKNOWN (INT-10) …
    denied = post(client, ch_request({**CH_ALL, "III.B.7.ii": False}))
    assert value_of(denied, "II.A.2.c") == "FALSE"
    assert determination(denied) == "INSUFFICIENT_DOCUMENTATION"
    assert "II.A.2#valid-test" in deciding(denied)
    # … and with a valid normal test on file nothing qualifies
    tested = post(client, ch_request({**CH_ALL, "III.B.7.ii": False}, observations=[spo2(97, before(5))]))
    assert determination(tested) == "NOT_MEDICALLY_NECESSARY"


def test_cluster_headache_not_meeting_ichd3_does_not_exclude_another_indication(client):
    body = post(client, ch_request({**CH_ALL, "II.A.1.d.i.A": 2}, code="E1390", reasons=("J44.9", "G44.009"),
                                    observations=[spo2(86, before(5))]))
    assert determination(body) == "SUPPORTED"
    assert value_of(body, "II.B.9") == "FALSE"
    assert "AUTH_12M" in advisories(body)


def test_other_headache_alone_is_excluded(client):
    body = post(client, mg_request(reason_codes=["G43.909"], observations=[spo2(86, before(5))]))
    assert determination(body) == "NOT_MEDICALLY_NECESSARY"
    assert "II.B.5" in deciding(body)


# -- other noncoverage (II.B) -------------------------------------------------------------------------------------
def test_angina_without_hypoxemia_is_excluded(client):
    body = post(client, mg_request(reason_codes=["I20.9"], observations=[spo2(95, before(5))], answers={"II.A.1": True}))
    assert determination(body) == "NOT_MEDICALLY_NECESSARY"
    assert "II.B.3" in deciding(body)
    hypoxemic = post(client, mg_request(reason_codes=["I20.9"], observations=[spo2(86, before(5))], answers={"II.A.1": True}))
    assert value_of(hypoxemic, "II.B.3") == "FALSE"
    assert determination(hypoxemic) == "SUPPORTED"


def test_breathlessness_with_cor_pulmonale_is_not_excluded(client):
    body = post(client, mg_request(reason_codes=["R06.02"], conditions=[condition("I27.81")], observations=[spo2(95, before(5))]))
    assert value_of(body, "II.B.4") == "FALSE"


@pytest.mark.parametrize("answers,applies", [
    ({"II.B.8#snf": True, "II.B.8#prn": True}, True),
    ({"II.B.8#snf": True}, False),
    ({"II.B.6": True}, True),
    ({"II.B.6": False}, False),
])
def test_attestation_only_exclusions(client, answers, applies):
    body = post(client, mg_request(observations=[spo2(86, before(5))], answers=answers))
    assert determination(body) == ("NOT_MEDICALLY_NECESSARY" if applies else "SUPPORTED")


def test_terminal_illness_applies_only_without_qualifying_hypoxemia(client):
    hypoxemic = post(client, mg_request(observations=[spo2(86, before(5))], answers={"II.B.1": True}))
    assert determination(hypoxemic) == "SUPPORTED"
    normal = post(client, mg_request(observations=[spo2(95, before(5))], answers={"II.B.1": True}))
    assert determination(normal) == "NOT_MEDICALLY_NECESSARY"
    assert "II.B.1" in deciding(normal)


# -- indication (II.A.1) --------------------------------------------------------------------------------------------
def test_indication_not_coded_needs_the_clinicians_determination(client):
    obs = [spo2(86, before(5))]
    unanswered = post(client, mg_request(reason_codes=["R06.83"], observations=obs))
    assert determination(unanswered) == "INSUFFICIENT_DOCUMENTATION"
    assert "II.A.1#attested" in deciding(unanswered)
    attested = post(client, mg_request(reason_codes=["R06.83"], observations=obs, answers={"II.A.1": True}))
    assert determination(attested) == "SUPPORTED"
    denied = post(client, mg_request(reason_codes=["R06.83"], observations=obs, answers={"II.A.1": False}))
    assert determination(denied) == "NOT_MEDICALLY_NECESSARY"


@pytest.mark.parametrize("code,node", [
    ("J84.10", "II.A.1.a.ii"), ("J47.9", "II.A.1.a.iv"), ("C34.90", "II.A.1.a.v"), ("I27.20", "II.A.1.b.i"),
    ("G47.33", "II.A.1.b.ii"), ("D75.1", "II.A.1.b.iv"), ("Q32.0", "II.A.1.b.viii"), ("J45.909", "II.A.1.c.i"),
    ("J20.9", "II.A.1.c.ii"), ("J05.0", "II.A.1.c.iii"), ("R09.02", "II.A.1.b#other"),
])
def test_listed_indications(client, code, node):
    body = post(client, mg_request(reason_codes=[code], observations=[spo2(86, before(5))]))
    assert value_of(body, node) == "TRUE"
    assert value_of(body, "II.A.1") == "TRUE"


# -- advisories (II.C, SPO2_DISPARITY) --------------------------------------------------------------------------------
@pytest.mark.parametrize("value,disparity", [(87, False), (88, True), (92, True), (93, False)])
def test_spo2_disparity_for_pulse_oximetry_88_to_92(client, value, disparity):
    body = post(client, mg_request(observations=[spo2(value, before(5)), spo2(86, before(4))]))
    assert ("SPO2_DISPARITY" in advisories(body)) is disparity
    assert determination(body) == "SUPPORTED"


def test_authorization_advisories_only_on_supported(client):
    chronic = post(client, mg_request(observations=[spo2(86, before(5))]))
    assert "AUTH_12M" in advisories(chronic) and "AUTH_LT6M" not in advisories(chronic)
    denied = post(client, mg_request(observations=[spo2(95, before(5))]))
    assert not {"AUTH_12M", "AUTH_LT6M"} & set(advisories(denied))
    pending = post(client, mg_request(observations=[spo2(86, before(5), o2=None)]))
    assert not {"AUTH_12M", "AUTH_LT6M"} & set(advisories(pending))


def test_not_in_effect_before_june_2024(client):
    body = post(client, mg_request(authored="2024-05-31", observations=[spo2(86, "2024-05-20")]))
    assert determination(body) == "NOT_APPLICABLE"
    later = post(client, mg_request(authored="2024-06-01", observations=[spo2(86, "2024-05-20")]))
    assert determination(later) == "SUPPORTED"


def test_questionnaire_holds_the_mg_oxy_items(client):
    resp = client.get(f"/fhir/Questionnaire/{MG}")
    assert resp.status_code == 200
    links = {i["linkId"] for i in resp.get_json()["item"]}
    expected = {"II.A.1", "II.A.1.a.v", "II.A.2.p1#contraindicated", "II.A.2.p5", "II.A.2.a.ii#assoc",
                "II.A.2.b.ii.B.3", "II.A.2.a.iii.A", "II.A.2.a.iii.B", "II.A.2.b.ii.A", "II.B.1", "II.B.6",
                "II.B.8#snf", "II.B.8#prn", "III.B.5", "III.B.7.ii", "AppA.C", "II.A.1.d.i.A", "II.A.1.d.i.B",
                "II.A.1.d.i.C", "II.A.1.d.i.D", "II.A.1.d.i.E"}
    assert {f"{MG}/{i}" for i in expected} <= links


def test_every_numbered_item_of_the_policy_is_a_criterion():
    from cds_service.library import load_library
    from conftest import REPO

    policy = load_library(REPO / "policies").by_prefix(MG)
    outline = (
        "II.A II.A.1 II.A.1.a II.A.1.a.i II.A.1.a.ii II.A.1.a.iii II.A.1.a.iv II.A.1.a.v II.A.1.a.vi II.A.1.b "
        "II.A.1.b.i II.A.1.b.ii II.A.1.b.iii II.A.1.b.iv II.A.1.b.v II.A.1.b.vi II.A.1.b.vii II.A.1.b.viii II.A.1.c "
        "II.A.1.c.i II.A.1.c.ii II.A.1.c.iii II.A.1.c.iv II.A.1.d II.A.1.d.i II.A.1.d.i.A II.A.1.d.i.B II.A.1.d.i.C "
        "II.A.1.d.i.C.1 II.A.1.d.i.C.1.a II.A.1.d.i.C.1.b II.A.1.d.i.C.1.c II.A.1.d.i.C.1.d II.A.1.d.i.C.1.e "
        "II.A.1.d.i.C.2 II.A.1.d.i.D II.A.1.d.i.E II.A.1.d.ii II.A.1.d.ii.A II.A.1.d.ii.B II.A.1.d.ii.C II.A.1.d.iii "
        "II.A.1.d.iii.A II.A.1.d.iii.B II.A.1.d.iii.C II.A.2 II.A.2.p1 II.A.2.p2 II.A.2.p3 II.A.2.p4 II.A.2.p5 "
        "II.A.2.p6 II.A.2.a II.A.2.a.i II.A.2.a.ii II.A.2.a.iii II.A.2.a.iii.A II.A.2.a.iii.B II.A.2.a.iii.C II.A.2.b "
        "II.A.2.b.i II.A.2.b.ii II.A.2.b.ii.A II.A.2.b.ii.B II.A.2.b.ii.B.1 II.A.2.b.ii.B.2 II.A.2.b.ii.B.3 II.A.2.c "
        "II.A.2.d II.A.2.d.i II.A.2.d.ii II.B II.B.1 II.B.2 II.B.3 II.B.4 II.B.5 II.B.6 II.B.7 II.B.8 II.B.9 II.C "
        "III III.A III.B III.B.1 III.B.2 III.B.3 III.B.4 III.B.5 III.B.6 III.B.7 III.B.7.i III.B.7.ii III.C III.C.1 "
        "III.C.2 III.C.3 III.C.4 III.C.5 APPL AppA.A AppA.B AppA.C"
    ).split()
    assert [i for i in outline if not policy.has_node(i)] == []
    assert policy.role_of("E1392") and policy.role_of("E0425") is None
