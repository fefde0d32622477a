"""CP.MP.190 rev 01/22 (prefix CP.MP.190-2022, in effect 2022-01-01 to 2022-12-31), end to end.

Rev 01/22 is rev 01/23 except (contract §3.1, §9.3, §10.4, §11.10, and the two texts):
* section VI covers members ≥ 21 only: a younger member whose only indication is cluster headache (CH)
  routes by age (II / IV), while rev 01/23 sends a CH-only order to VI at any age;
* VI.A (CH diagnosis), VI.B (enrolled in a CMS-approved trial, applied literally, A-14), VI.C (≥ 5
  attacks), VI.D.1–6 (accompanying features, any);
* VI equipment: E0424, E0425, E0441, S8120 only;
* no lesser-cost Note: LESSER_COST is 2023-only.

Requests come from tests/builders.py (a DeviceRequest for a Centene member). "Today" is FIXED_NOW
(2025-12-31), so an F90 answer counts when authored in [T0 − 90, 2025-12-31].
"""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from builders import condition, device_request, encounter, evaluation, request, spo2, value_of
from cds_service.library import load_library
from conftest import REPO

P22 = "CP.MP.190-2022"
P23 = "CP.MP.190-2023"
T0 = date(2022, 6, 1)
ADULT_BIRTH = "1970-03-15"
CH = ("G44.019",)
VI_2022 = {"VI.B": True, "VI.C": 8, "VI.D.1": True}
VI_2023 = {"VI.A.1": 8, "VI.A.2.a": True}

SUPPORTED = "SUPPORTED"
NMN = "NOT_MEDICALLY_NECESSARY"
INSUFFICIENT = "INSUFFICIENT_DOCUMENTATION"
NOT_APPLICABLE = "NOT_APPLICABLE"


def answers(prefix: str, items: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in items.items()}


def post(client, req) -> dict:
    resp = client.post("/cds-services/order-sign-crd", json=req)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def ev(body) -> dict:
    return evaluation(body)


def short_deciding(body) -> list[str]:
    return [d.split("/", 1)[1] for d in ev(body)["deciding"]]


def ch_order(code="E0424", authored=T0, birth=ADULT_BIRTH, items=None, prefix=P22, **kw) -> dict:
    """A cluster-headache-only order (reasonCode G44.019)."""
    items = VI_2022 if items is None and prefix == P22 else VI_2023 if items is None else items
    return request(code, authored, birth, reason_codes=CH, questionnaire_answers=answers(prefix, items) or None, **kw)


# -- revision selection by authoredOn -------------------------------------------------------------------------
@pytest.mark.parametrize("authored, revision", [
    ("2021-12-31", None),
    ("2022-01-01", P22),
    ("2022-12-31", P22),
    ("2023-01-01", P23),
])
def test_revision_selected_by_authored_on(client, authored, revision):
    d = date.fromisoformat(authored)
    obs = [spo2(88, d, id="rest")]
    prefix = revision or P22
    body = post(client, request("E1390", authored, ADULT_BIRTH, observations=obs,
                                questionnaire_answers=answers(prefix, {"I.E": True})))
    assert ev(body)["revision"] == revision
    if revision is None:
        assert ev(body)["determination"] == NOT_APPLICABLE
        assert body["cards"][0]["summary"] == "NOT_APPLICABLE: no payer policy on file for E1390"
    else:
        assert ev(body)["determination"] == SUPPORTED
        assert ev(body)["policy"] == {"CP.MP.190-2022": "CP.MP.190 rev 01/22", "CP.MP.190-2023": "CP.MP.190 rev 01/23"}[revision]
        assert f"{revision}/I.B.1.a" in ev(body)["deciding"]


def test_answers_to_the_other_revision_do_not_count(client):
    """§9.1: only linkIds of the revision being evaluated count."""
    body = post(client, request("E1390", T0, ADULT_BIRTH, observations=[spo2(88, T0, id="rest")],
                                questionnaire_answers=answers(P23, {"I.E": True})))
    assert ev(body)["revision"] == P22
    assert value_of(body, "I.E") == "UNKNOWN"
    assert ev(body)["determination"] == INSUFFICIENT


# -- the route: section VI is ≥ 21 in rev 01/22 -------------------------------------------------------------------
def test_cluster_headache_at_19_routes_to_ii_under_rev_01_22_and_to_vi_under_rev_01_23(client):
    old = post(client, ch_order(authored="2022-12-31", birth="2003-05-02"))
    assert (ev(old)["revision"], ev(old)["route"]) == (P22, "II")
    assert value_of(old, "VI") is None and value_of(old, "VI.B") is None
    assert ev(old)["determination"] == INSUFFICIENT  # II.A and II.B undocumented
    assert {"II.A", "II.B"} <= set(short_deciding(old))
    new = post(client, ch_order(authored="2023-01-01", birth="2003-05-02", prefix=P23))
    assert (ev(new)["revision"], ev(new)["route"]) == (P23, "VI")
    assert ev(new)["determination"] == SUPPORTED


@pytest.mark.parametrize("birth, route", [
    ("2001-06-01", "VI"),  # 21st birthday on T0
    ("2001-06-02", "II"),  # 21 tomorrow
    ("1940-01-01", "VI"),
    ("2001", None),  # partial: could be 20 or 21 on T0 → route UNKNOWN (clarification 10)
    ("1990", "VI"),  # partial but decides
])
def test_vi_age_threshold(client, birth, route):
    body = post(client, ch_order(birth=birth))
    assert ev(body)["route"] == route
    if route is None:
        assert ev(body)["determination"] == INSUFFICIENT
        assert short_deciding(body) == ["ROUTE"]
        assert "birthDate" in body["cards"][0]["detail"]


def test_missing_birth_date_matters_for_cluster_headache_only_in_2022(client):
    old = post(client, ch_order(birth=None))
    assert ev(old)["determination"] == INSUFFICIENT and short_deciding(old) == ["ROUTE"]
    new = post(client, ch_order(authored="2023-06-01", birth=None, prefix=P23))
    assert (ev(new)["route"], ev(new)["determination"]) == ("VI", SUPPORTED)


def test_young_member_with_cluster_headache_can_qualify_under_ii(client):
    """Under 21 in 2022, CH does not bar section II: the pediatric criteria decide."""
    body = post(client, ch_order(birth="2010-02-01", items={"II.A": True}, observations=[spo2(90, T0, id="rest")]))
    assert ev(body)["route"] == "II"
    assert value_of(body, "II.B.2") == "TRUE"
    assert ev(body)["determination"] == SUPPORTED


def test_cluster_headache_with_an_oxygen_indication_is_not_section_vi(client):
    body = post(client, request("E0424", T0, ADULT_BIRTH, reason_codes=("G44.019", "J44.9"),
                                observations=[spo2(88, T0, id="rest")], questionnaire_answers=answers(P22, {"I.E": True})))
    assert ev(body)["route"] == "I" and ev(body)["determination"] == SUPPORTED


# -- VI.A–VI.D ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trial, expected", [(True, SUPPORTED), (False, NMN), (None, INSUFFICIENT)])
def test_vi_b_clinical_trial_is_applied_literally(client, trial, expected):
    """A-14: rev 01/22 VI.B (enrolled in a CMS-approved clinical trial) is required as written."""
    items = {"VI.C": 8, "VI.D.1": True} | ({} if trial is None else {"VI.B": trial})
    body = post(client, ch_order(items=items))
    assert ev(body)["route"] == "VI"
    assert value_of(body, "VI.B") == {True: "TRUE", False: "FALSE", None: "UNKNOWN"}[trial]
    assert ev(body)["determination"] == expected
    if expected != SUPPORTED:
        assert "VI.B" in short_deciding(body)
    if trial is None:
        assert f"answer Questionnaire item `{P22}/VI.B` (boolean)" in body["cards"][0]["detail"]


def test_the_same_cluster_headache_without_a_trial_is_covered_under_rev_01_23(client):
    body = post(client, ch_order(authored="2023-03-01", prefix=P23))
    assert ev(body)["determination"] == SUPPORTED
    assert not any(c["id"].endswith("VI.B") for c in ev(body)["criteria"])


@pytest.mark.parametrize("days_before, counted", [(90, True), (91, False)])
def test_vi_b_is_f90(client, days_before, counted):
    """F90: authored in [T0 − 90, today] (today = 2025-12-31, long after a 2022 T0)."""
    body = post(client, ch_order(qr_authored=T0 - timedelta(days=days_before)))
    assert value_of(body, "VI.B") == ("TRUE" if counted else "UNKNOWN")
    assert value_of(body, "VI.C") == "TRUE"  # ANY freshness: history counts at any date
    assert value_of(body, "VI.D.1") == "TRUE"
    if not counted:
        assert "stale" in body["cards"][0]["detail"]


def test_vi_c_and_vi_d_count_at_any_date(client):
    old_history = answers(P22, {"VI.C": 6, "VI.D.3": True})
    from builders import questionnaire_response

    history = questionnaire_response(old_history, "2019-04-01", id="qr-history")
    body = post(client, ch_order(items={"VI.B": True}, questionnaire_responses=[history]))
    assert (value_of(body, "VI.C"), value_of(body, "VI.D.3")) == ("TRUE", "TRUE")
    assert ev(body)["determination"] == SUPPORTED


@pytest.mark.parametrize("attacks, value, expected", [(4, "FALSE", NMN), (5, "TRUE", SUPPORTED)])
def test_vi_c_at_least_five_attacks(client, attacks, value, expected):
    body = post(client, ch_order(items={"VI.B": True, "VI.C": attacks, "VI.D.2": True}))
    assert value_of(body, "VI.C") == value
    assert ev(body)["determination"] == expected


@pytest.mark.parametrize("feature", [f"VI.D.{i}" for i in range(1, 7)])
def test_vi_d_any_one_feature(client, feature):
    body = post(client, ch_order(items={"VI.B": True, "VI.C": 5, feature: True}))
    assert value_of(body, "VI.D") == "TRUE"
    assert ev(body)["determination"] == SUPPORTED


def test_vi_d_all_features_absent(client):
    items = {"VI.B": True, "VI.C": 9} | {f"VI.D.{i}": False for i in range(1, 7)}
    body = post(client, ch_order(items=items))
    assert value_of(body, "VI.D") == "FALSE"
    assert ev(body)["determination"] == NMN
    assert "VI.D" in short_deciding(body)


def test_vi_a_is_the_coded_diagnosis(client):
    body = post(client, ch_order())
    assert value_of(body, "VI.A") == "TRUE"
    assert [c["evidence"] for c in ev(body)["criteria"] if c["id"] == f"{P22}/VI.A"] == [["DeviceRequest/dr-order"]]


def test_cluster_headache_from_present_conditions_when_the_order_has_no_reason(client):
    body = post(client, request("E0424", T0, ADULT_BIRTH, reason_codes=(), conditions=[condition("G44.029", id="c-ch")],
                                questionnaire_answers=answers(P22, VI_2022)))
    assert ev(body)["route"] == "VI"
    assert value_of(body, "VI.A") == "TRUE"
    assert ev(body)["determination"] == SUPPORTED


# -- VI equipment (INT-29, A-13) and advisories ---------------------------------------------------------------------
@pytest.mark.parametrize("code, in_2022, in_2023", [
    ("E0424", True, True), ("E0425", True, True), ("E0441", True, True), ("S8120", True, True),
    ("E0439", False, True), ("E0440", False, True), ("E0442", False, True), ("S8121", False, True),
    ("E1390", False, False), ("E0431", False, False),
])
def test_vi_equipment_by_revision(client, code, in_2022, in_2023):
    old = post(client, ch_order(code))
    assert value_of(old, "VI#equipment") == ("TRUE" if in_2022 else "FALSE")
    assert ev(old)["determination"] == (SUPPORTED if in_2022 else NMN)
    new = post(client, ch_order(code, authored="2023-06-01", prefix=P23))
    assert value_of(new, "VI#equipment") == ("TRUE" if in_2023 else "FALSE")


@pytest.mark.parametrize("code", ["E1392", "E0433", "E0434", "E0435", "E0439", "E0440"])
def test_lesser_cost_is_2023_only(client, code):
    def run(authored, prefix):
        return post(client, request(code, authored, ADULT_BIRTH, observations=[spo2(88, authored, id="rest")],
                                    questionnaire_answers=answers(prefix, {"I.E": True, "I.F.1": True})))

    assert "LESSER_COST" not in ev(run("2022-06-01", P22))["advisories"]
    assert "LESSER_COST" in ev(run("2023-06-01", P23))["advisories"]


def test_freq_mismatch_still_applies_in_2022(client):
    req = request("E1390", T0, ADULT_BIRTH, observations=[spo2(87, T0, "EXERCISE", id="ex"), spo2(93, T0, id="rest"),
                                                          spo2(93, T0, "EXERCISE", "on", id="ex-o2", at="09:30")],
                  questionnaire_answers=answers(P22, {"I.E": True}))
    req["context"]["draftOrders"]["entry"][0]["resource"]["parameter"] = [
        {"code": {"text": "hours per day"}, "valueQuantity": {"value": 24, "unit": "h/d", "system": "http://unitsofmeasure.org", "code": "h/d"}}]
    body = post(client, req)
    assert ev(body)["determination"] == SUPPORTED
    assert ev(body)["advisories"] == ["FREQ_MISMATCH"]


# -- sections I–V behave as in rev 01/23 ------------------------------------------------------------------------------
HF_EDEMA = [condition("I50.9", id="c-hf"), condition("R60.0", id="c-edema")]
SAME_CASES = {
    "rest-88": dict(observations=[spo2(88, "{d}", id="rest")], answers={"I.E": True}),
    "rest-89-no-finding": dict(observations=[spo2(89, "{d}", id="rest")], answers={"I.E": True}),
    "rest-89-hf-edema": dict(observations=[spo2(89, "{d}", id="rest")], answers={"I.E": True}, conditions=HF_EDEMA),
    "no-test": dict(observations=[], answers={"I.E": True}),
    "i-e-false": dict(observations=[spo2(85, "{d}", id="rest")], answers={"I.E": False}),
    "portable-sleep-only": dict(code="E0431", observations=[spo2(92, "{d}", id="rest")], answers={"I.E": True, "I.F.1": True},
                                sleep=True),
    "angina": dict(observations=[spo2(93, "{d}", id="rest")], answers={"I.E": True}, reasons=("J44.9", "I20.9")),
    "child-bpd": dict(birth="2015-01-01", observations=[spo2(90, "{d}", id="rest")], answers={}, reasons=("P27.1",)),
}


def _same_case(client, name, authored, prefix):
    case = SAME_CASES[name]
    obs = [dict(o, effectiveDateTime=f"{authored}T09:00:00-05:00") for o in case["observations"]]
    if case.get("sleep"):
        from builders import oximetry

        obs.append(oximetry(84, date.fromisoformat(authored) - timedelta(days=3), {"minutes-spo2-le-88": 30}, id="night"))
    return post(client, request(case.get("code", "E1390"), authored, case.get("birth", ADULT_BIRTH), observations=obs,
                                conditions=case.get("conditions", ()), reason_codes=case.get("reasons", ("J44.9",)),
                                questionnaire_answers=answers(prefix, case["answers"]) or None))


@pytest.mark.parametrize("name", sorted(SAME_CASES))
def test_sections_i_to_v_decide_as_rev_01_23(client, name):
    old = _same_case(client, name, "2022-06-01", P22)
    new = _same_case(client, name, "2023-06-01", P23)
    assert (ev(old)["revision"], ev(new)["revision"]) == (P22, P23)
    assert ev(old)["determination"] == ev(new)["determination"]
    assert short_deciding(old) == short_deciding(new)
    assert ev(old)["route"] == ev(new)["route"]


def test_pediatric_reauthorization_lomn_wording_is_improve(client):
    prior = device_request("dr-prior", "E1390", "2021-10-01")
    body = post(client, request("E1390", T0, "2012-03-15", reason_codes=("E84.0",), prior_request=prior,
                                encounters=[encounter("enc-eval", "AMB", "2022-05-20")],
                                questionnaire_answers=answers(P22, {"IV.B.2": True})))
    assert ev(body)["route"] == "IV"
    assert ev(body)["determination"] == SUPPORTED
    assert {"IV.A", "IV.B.2"} <= set(short_deciding(body))


# -- the document -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def library():
    return load_library(REPO / "policies")


def test_outline_of_rev_01_22(library):
    policy = library.by_prefix(P22)
    outline = ("I I.A I.B I.B.1 I.B.1.a I.B.1.b I.B.1.c I.B.1.d I.B.2 I.B.2.a I.B.2.b I.B.2.b.i I.B.2.b.ii I.B.2.b.iii "
               "I.C I.D I.D.1 I.D.2 I.E I.F I.F.1 I.F.2 II II.A II.B II.B.1 II.B.2 II.B.3 II.C III III.A III.A.1 III.A.2 "
               "III.A.3 III.A.3.a III.A.3.b III.B III.B.1 III.B.2 IV IV.A IV.B IV.B.1 IV.B.1.a IV.B.1.b IV.B.2 IV.C "
               "V V.A V.B V.C V.D VI VI.A VI.B VI.C VI.D VI.D.1 VI.D.2 VI.D.3 VI.D.4 VI.D.5 VI.D.6").split()
    assert [i for i in outline + [f"II.A.{n}" for n in range(1, 9)] if not policy.has_node(i)] == []
    assert not policy.has_node("VI.A.1") and not policy.has_node("VI.A.2")
    assert (policy.revision, policy.title) == ("01/22", "Oxygen Use and Concentrators")
    assert (policy.effective_start, policy.effective_end) == (date(2022, 1, 1), date(2022, 12, 31))
    assert "hypoxia-related" in policy.node("I.A").text
    assert "not expected to improve" in policy.node("IV.B.2").text
    assert "≥ 21" in policy.node("VI").text
    assert [a["code"] for a in policy.advisories] == ["FREQ_MISMATCH"]


def test_questionnaire_is_2023_except_section_vi(library):
    old, new = library.by_prefix(P22), library.by_prefix(P23)

    def items(policy):
        return {i.link_id.split("/", 1)[1]: (i.type, i.freshness) for i in policy.items.values()}

    old_items, new_items = items(old), items(new)
    vi_2023 = {k for k in new_items if k.startswith("VI.")}
    assert vi_2023 == {"VI.A.1"} | {f"VI.A.2.{x}" for x in "abcdef"}
    assert {k: v for k, v in old_items.items() if not k.startswith("VI.")} == \
        {k: v for k, v in new_items.items() if not k.startswith("VI.")}
    assert {k: v for k, v in old_items.items() if k.startswith("VI.")} == {
        "VI.A": ("boolean", "F90"), "VI.B": ("boolean", "F90"), "VI.C": ("integer", "ANY"),
        **{f"VI.D.{i}": ("boolean", "ANY") for i in range(1, 7)},
    }


def test_questionnaire_is_served(client):
    resp = client.get(f"/fhir/Questionnaire/{P22}")
    assert resp.status_code == 200
    q = resp.get_json()
    assert q["url"] == f"http://example.org/fhir/cds-coverage/Questionnaire/{P22}"
    assert f"{P22}/VI.B" in {i["linkId"] for i in q["item"]}
