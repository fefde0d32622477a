"""encounter-start-crd and encounter-discharge-crd: secondary hooks, useful work only.

CRD 2.0.1 req. 165/167 (CRD 2.2 hook-19): these hooks need not return anything, and what they return
must not ask for documentation.  The service evaluates the patient's open orders and tells, for an
inpatient stay, when a home-oxygen order will need its qualifying test taken in the two days
before discharge (CP.MP.190 I.D.1, MG-OXY II.A.2.p4; contract §7.2, §13.14) — at admission, and at
discharge when no such test is on record.  Missing data is never an error here.
"""
from __future__ import annotations

import copy
import json

import pytest

import builders as b
import hook_requests as h
from cds_service import create_app
from conformance import response_errors
from conftest import EXAMPLES, FIXED_NOW, PEER_DATA, load_json

INFERNO = PEER_DATA / "inferno-crd-fixtures"
DISCHARGE_TEST_ON_FILE = EXAMPLES / "cp-mp-190-2023/07-adult-inpatient-discharge-test-e1390.json"  # enc-07-inpatient
TEST_TOO_EARLY = EXAMPLES / "cp-mp-190-2023/08-adult-inpatient-test-too-early-e1390.json"  # enc-08-inpatient
START, DISCHARGE = "encounter-start", "encounter-discharge"
NEVER = ("documentation needed", "doc-needed", "insufficient", "not medically necessary", "supported")


def post(client, body):
    resp = client.post(f"/cds-services/{body['hook']}-crd", json=body)
    return resp.status_code, resp.get_json()


def checked(payload, dialect="2.0.1") -> list[dict]:
    """The cards, after the checks every encounter-hook answer passes."""
    assert response_errors(payload, dialect) == []
    assert "systemActions" not in payload  # no coverage-information on secondary hooks
    for card in payload["cards"]:
        assert card["indicator"] == "info"
        text = (card["summary"] + " " + card["detail"]).lower()
        assert not any(word in text for word in NEVER), text
    return payload["cards"]


def stay(klass="IMP", end=None, status="in-progress"):
    return b.encounter("enc-stay", klass, b.before(3), end, status=status)


def adult_admitted(**kwargs) -> dict:
    """An adult with an open home-oxygen order (E1390), admitted as an inpatient."""
    return b.request(encounters=[kwargs.pop("encounter", stay())], **kwargs)


@pytest.mark.parametrize("name", ["encounter_start_hook_request.json", "encounter_discharge_hook_request.json"])
def test_inferno_fixtures_get_a_conformant_200(client, name):
    """No prefetch, fhirServer off the allowlist: nothing to go on, nothing sent, no advice, no error."""
    body = load_json(INFERNO / name)
    status, payload = post(client, body)
    assert status == 200, payload
    assert checked(payload) == []


@pytest.mark.parametrize("hook", [START, DISCHARGE])
def test_context_schemas_accept_the_inferno_fixtures(hook):
    import jsonschema

    from cds_service.validation import SCHEMAS

    schema = json.loads((SCHEMAS / f"context-{hook}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    body = load_json(INFERNO / f"{hook.replace('-', '_')}_hook_request.json")
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(body["context"])) == []


def test_discovery_lists_both_encounter_hooks(client):
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    assert services["encounter-start-crd"]["hook"] == START
    assert services["encounter-discharge-crd"]["hook"] == DISCHARGE
    for sid in ("encounter-start-crd", "encounter-discharge-crd"):
        assert {"coverage", "deviceRequests", "encounters", "observations"} <= set(services[sid]["prefetch"])


@pytest.mark.parametrize("dialect", ["2.0.1", "2.2"])
def test_admission_with_an_open_oxygen_order_gets_the_two_day_rule(client, dialect):
    request = h.encounter_hook(adult_admitted(), START, "enc-stay")
    if dialect == "2.2":
        request["extension"] = dict(h.CRD_22)
    status, payload = post(client, request)
    assert status == 200, payload
    (card,) = checked(payload, dialect)
    assert card["summary"] == ("Home oxygen E1390 stationary oxygen: qualifying test within 2 days before discharge "
                               "(CP.MP.190 rev 01/23)")
    assert h.associated(card) == ["DeviceRequest/dr-order"]
    assert "`CP.MP.190-2023/I.D.1`" in card["detail"] and "Encounter/enc-stay" in card["detail"]
    assert card["source"]["label"] == "Centene-affiliated health plan"
    assert card["extension"]["cds-coverage.advice"]["criteria"] == ["CP.MP.190-2023/I.D.1"]


def test_admission_masshealth_member_names_the_masshealth_rule(client):
    request = h.encounter_hook(adult_admitted(payer="masshealth"), START, "enc-stay")
    (card,) = checked(post(client, request)[1])
    assert card["source"]["label"] == "MassHealth"
    assert card["extension"]["cds-coverage.advice"]["criteria"] == ["MG-OXY-2024/II.A.2.p4"]


def test_no_advice_when_the_route_has_no_inpatient_rule(client):
    """A Centene member under 21: initial orders have no test-setting rule (INT-16)."""
    request = h.encounter_hook(adult_admitted(birth_date="2012-05-01"), START, "enc-stay")
    assert checked(post(client, request)[1]) == []


@pytest.mark.parametrize("klass", ["AMB", "EMER", "HH"])
def test_no_advice_outside_an_inpatient_stay(client, klass):
    request = h.encounter_hook(adult_admitted(encounter=stay(klass)), START, "enc-stay")
    assert checked(post(client, request)[1]) == []


def test_no_advice_without_an_open_oxygen_order(client):
    closed = h.encounter_hook(adult_admitted(), START, "enc-stay")
    closed["prefetch"]["deviceRequests"]["entry"][0]["resource"]["status"] = "completed"
    assert checked(post(client, closed)[1]) == []
    pump = h.signed(load_json(EXAMPLES / "cp-mp-173-2024/03-implant-nonmalignant-trial-50pct-supported.json"))
    pump["hook"] = START
    pump["context"]["encounterId"] = "enc-pump"
    pump["prefetch"]["encounters"] = b.bundle([{**stay(), "id": "enc-pump", "subject": {"reference": "Patient/pt-pump"}}])
    assert checked(post(client, pump)[1]) == []


def test_discharge_without_a_test_in_the_window_says_so(client):
    """Example 08: the only room-air test is 4 days before discharge, the later one on oxygen."""
    status, payload = post(client, h.encounter_hook(load_json(TEST_TOO_EARLY), DISCHARGE, "enc-08-inpatient"))
    assert status == 200, payload
    (card,) = checked(payload)
    assert "2025-01-14–2025-01-16" in card["summary"]
    assert "[2025-01-14, 2025-01-16]" in card["detail"] and "`CP.MP.190-2023/I.D.1`" in card["detail"]
    assert h.associated(card) == ["DeviceRequest/dr-08-e1390"]


def test_discharge_with_the_test_on_file_needs_no_advice(client):
    status, payload = post(client, h.encounter_hook(load_json(DISCHARGE_TEST_ON_FILE), DISCHARGE, "enc-07-inpatient"))
    assert status == 200
    assert checked(payload) == []


def test_discharge_in_progress_uses_today_as_the_discharge_date(client):
    """No period.end yet: the discharge being done now (today, 2025-12-31 in the tests)."""
    early = b.spo2(87, "2025-12-27", encounter="Encounter/enc-stay")
    request = h.encounter_hook(adult_admitted(observations=[early], encounter=b.encounter(
        "enc-stay", "IMP", "2025-12-20", None, status="in-progress")), DISCHARGE, "enc-stay")
    (card,) = checked(post(client, request)[1])
    assert "2025-12-29–2025-12-31" in card["summary"]
    in_window = b.spo2(87, "2025-12-30", encounter="Encounter/enc-stay")
    request = h.encounter_hook(adult_admitted(observations=[early, in_window], encounter=b.encounter(
        "enc-stay", "IMP", "2025-12-20", None, status="in-progress")), DISCHARGE, "enc-stay")
    assert checked(post(client, request)[1]) == []


@pytest.mark.parametrize("hook", [START, DISCHARGE])
def test_missing_data_and_no_fhir_server_is_no_advice_not_412(client, hook):
    request = h.encounter_hook(adult_admitted(), hook, "enc-stay")
    del request["prefetch"]
    status, payload = post(client, request)
    assert status == 200, payload
    assert checked(payload) == []
    request = h.encounter_hook(adult_admitted(), hook, "enc-stay")
    del request["prefetch"]["observations"], request["prefetch"]["coverage"]
    status, payload = post(client, request)
    assert status == 200 and checked(payload) == []


def test_unknown_encounter_is_no_advice(client):
    request = h.encounter_hook(adult_admitted(), START, "enc-unknown")
    assert checked(post(client, request)[1]) == []


@pytest.mark.parametrize("hook", [START, DISCHARGE])
def test_missing_encounter_id_is_400(client, hook):
    request = h.encounter_hook(adult_admitted(), hook, "enc-stay")
    del request["context"]["encounterId"]
    status, payload = post(client, request)
    assert status == 400
    assert payload["issue"][0]["expression"] == ["context"]


# -- the FHIR server path ---------------------------------------------------------------------------
def test_discharge_advice_from_the_fhir_server(fhir_server):
    """No prefetch: the encounter is read, the patient's orders and data queried."""
    app = create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW, "FHIR_ALLOWLIST": [fhir_server.base]})
    body = load_json(TEST_TOO_EARLY)
    fhir_server.checkout(body)
    signed = [{**r, "status": "active"} for r in h.drafts(body)]
    fhir_server.put_all(signed)
    try:
        request = copy.deepcopy(h.encounter_hook(body, DISCHARGE, "enc-08-inpatient"))
        request.pop("prefetch")
        request["fhirServer"] = fhir_server.base
        mark = fhir_server.proxy.mark()
        status, payload = post(app.test_client(), request)
    finally:
        fhir_server.put_all([], delete=[(r["resourceType"], r["id"]) for r in signed])
    assert status == 200, payload
    (card,) = checked(payload)
    assert h.associated(card) == ["DeviceRequest/dr-08-e1390"]
    paths = [s.path for s in fhir_server.proxy.since(mark)]
    assert "/fhir/Encounter/enc-08-inpatient" in paths
    assert any(p.startswith("/fhir/DeviceRequest?patient=") for p in paths)
