"""appointment-book-crd: a procedure booked as an appointment gets the determination it got when ordered.

A primary hook (CRD 2.0.1 req. 164/184, CRD 2.2 hook-16/hook-26).  The procedure is the order the
Appointment is based on, else the Appointment's own CPT/HCPCS service type.  Where the
coverage-information goes: CRD 2.0.1's profile-appointment carries it on the Appointment; CRD 2.2
gives it only to profile-appointment-no-order, so an appointment with an order has it on the order.
"""
from __future__ import annotations

import copy
import json

import pytest

import hook_requests as h
from cds_service import create_app
from conformance import response_errors
from conftest import EXAMPLES, FIXED_NOW, PEER_DATA, load_json

INFERNO = PEER_DATA / "inferno-crd-fixtures" / "appointment_book_hook_request.json"
PUMP_SUPPORTED = EXAMPLES / "cp-mp-173-2024/03-implant-nonmalignant-trial-50pct-supported.json"
PUMP_NMN = EXAMPLES / "cp-mp-173-2024/04-implant-nonmalignant-trial-49pct-not-medically-necessary.json"
COSMETIC = EXAMPLES / "mc-cp-mp-31-2025/01-skin-tags-eyelid-affect-eyesight-11200.json"
URL = "/cds-services/appointment-book-crd"


def post(client, body):
    resp = client.post(URL, json=body)
    return resp.status_code, resp.get_json()


def sign(client, body) -> dict:
    resp = client.post("/cds-services/order-sign-crd", json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _procedure_cases():
    """(example, ServiceRequest) for every procedure ordered in an order-sign example."""
    out = []
    for folder in sorted(p for p in EXAMPLES.iterdir() if (p / "index.json").exists()):
        for entry in load_json(folder / "index.json"):
            if entry.get("hook", "order-sign") != "order-sign":
                continue
            for res in h.drafts(load_json(folder / entry["file"])):
                if res["resourceType"] == "ServiceRequest":
                    out.append((f"{folder.name}/{entry['file']}", f"ServiceRequest/{res['id']}"))
    return out


PROCEDURES = _procedure_cases()


def test_discovery_lists_appointment_book_with_prefetch(client):
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    svc = services["appointment-book-crd"]
    assert svc["hook"] == "appointment-book" and svc["title"] and svc["description"]
    assert "serviceRequests" in svc["prefetch"] and "coverage" in svc["prefetch"]
    assert svc["extension"]["davinci-crd.version"] == ["2.0", "2.2"]


def test_inferno_fixture_gets_a_conformant_200(client):
    """Two proposed Appointments naming no procedure code, no prefetch, fhirServer off the allowlist:
    nothing is sent; each gets the technical-failure card saying the Coverage could not be had."""
    status, payload = post(client, load_json(INFERNO))
    assert status == 200, payload
    assert response_errors(payload, "2.0.1") == []
    assert [h.associated(c) for c in payload["cards"]] == [["Appointment/apt1"], ["Appointment/apt2"]]
    for card in payload["cards"]:
        assert card["summary"] == "Coverage could not be evaluated"
        assert "coverage (fhirServer is not a FHIR server this service may contact" in card["detail"]


def test_context_schema_accepts_the_inferno_fixture():
    import jsonschema

    from cds_service.validation import SCHEMAS

    schema = json.loads((SCHEMAS / "context-appointment-book.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(load_json(INFERNO)["context"])) == []


@pytest.mark.parametrize("body_path", [PUMP_SUPPORTED, PUMP_NMN], ids=["supported", "not-medically-necessary"])
def test_pump_implant_booked_gets_the_determination_it_got_when_ordered(client, body_path):
    """The bar: 62362 ordered (order-sign, with its pump and drug) and later booked as an Appointment
    based on that ServiceRequest (its pump and drug signed, in the record): the same determination,
    deciding criteria, advisories, revision and T0."""
    body = load_json(body_path)
    ordered = h.evaluations(sign(client, body))["ServiceRequest/sr-62362"]
    status, payload = post(client, h.book_order(body, "ServiceRequest/sr-62362"))
    assert status == 200, payload
    assert response_errors(payload, "2.0.1") == []
    booked = h.evaluations(payload)["ServiceRequest/sr-62362"]
    assert h.outcome(booked) == h.outcome(ordered)
    assert booked["criteria"] == ordered["criteria"]


@pytest.mark.parametrize("example,ref", PROCEDURES, ids=[f"{e}:{r}" for e, r in PROCEDURES])
def test_booked_procedure_in_crd_2_0_1_mode_annotates_the_appointment(client, example, ref):
    body = load_json(EXAMPLES / example)
    ordered = h.evaluations(sign(client, body))[ref]
    request = h.book_order(body, ref)
    status, payload = post(client, request)
    assert status == 200, payload
    assert response_errors(payload, "2.0.1") == []
    card = h.card_for(payload, ref)
    assert h.outcome(card["extension"]["cds-coverage.evaluation"]) == h.outcome(ordered)
    assert h.associated(card) == ["Appointment/apt-1"]
    assert f"For Appointment/apt-1, booked for {ref}." in card["detail"]
    (action,) = payload["systemActions"]
    appointment = request["context"]["appointments"]["entry"][0]["resource"]
    assert h.without_coverage_information(action["resource"]) == appointment  # unchanged but for the extension
    assert ref in action["description"] and "Appointment/apt-1" in action["description"]


@pytest.mark.parametrize("example,ref", PROCEDURES, ids=[f"{e}:{r}" for e, r in PROCEDURES])
def test_booked_procedure_in_crd_2_2_mode_annotates_the_service_request(client, example, ref):
    body = load_json(EXAMPLES / example)
    ordered = h.evaluations(sign(client, body))[ref]
    status, payload = post(client, h.book_order(body, ref, dialect="2.2"))
    assert status == 200, payload
    assert response_errors(payload, "2.2") == []
    card = h.card_for(payload, ref)
    assert h.outcome(card["extension"]["cds-coverage.evaluation"]) == h.outcome(ordered)
    assert h.associated(card) == [ref]
    (action,) = payload["systemActions"]
    record = next(r for r in h.drafts(body) if f"ServiceRequest/{r['id']}" == ref)
    assert h.without_coverage_information(action["resource"]) == {**record, "status": "active"}


def test_appointment_without_an_order_is_evaluated_on_its_service_type(client):
    """CRD profile-appointment-no-order: the procedure is the Appointment's CPT service type; its
    reasonCode is the indication; T0 is its created date.  Same determination as the order."""
    body = load_json(COSMETIC)
    sr = h.drafts(body)[0]
    ordered = h.evaluations(sign(client, body))[f"ServiceRequest/{sr['id']}"]
    appt = h.appointment("apt-skin", body["context"]["patientId"], serviceType=[sr["code"]],
                         reasonCode=sr["reasonCode"], created=sr["authoredOn"])
    for dialect in ("2.0.1", "2.2"):
        request = h.book(body, appt, dialect=dialect)
        request["prefetch"]["serviceRequests"]["entry"] = []  # not ordered
        status, payload = post(client, request)
        assert status == 200, payload
        assert response_errors(payload, dialect) == []
        ev = h.evaluations(payload)["Appointment/apt-skin"]
        assert h.outcome(ev) == h.outcome(ordered)
        (action,) = payload["systemActions"]
        assert action["resource"]["resourceType"] == "Appointment"  # no order: on the Appointment in both


def test_appointment_based_on_a_device_request_through_alternate_reference(client):
    """CRD 2.2: basedOn is Reference(ServiceRequest) in R4; other orders come by the alternate-reference extension."""
    body = load_json(PUMP_SUPPORTED)
    ordered = h.evaluations(sign(client, body))["DeviceRequest/dr-e0783"]
    based_on = [{"extension": [{"url": h.ALTERNATE_REFERENCE, "valueReference": {"reference": "DeviceRequest/dr-e0783"}}],
                 "display": "implantable pump"}]
    request = h.book(body, h.appointment("apt-pump", "pt-pump", based_on), dialect="2.2")
    status, payload = post(client, request)
    assert status == 200, payload
    assert response_errors(payload, "2.2") == []
    assert h.outcome(h.evaluations(payload)["DeviceRequest/dr-e0783"]) == h.outcome(ordered)
    assert payload["systemActions"][0]["resource"]["resourceType"] == "DeviceRequest"


def test_one_order_behind_two_appointments(client):
    """Two visits for one order: in 2.0.1 each Appointment gets its coverage-information; in 2.2 the
    order gets one, not two updates of the same resource."""
    body = load_json(PUMP_SUPPORTED)
    appts = [h.appointment(f"apt-{i}", "pt-pump", ["ServiceRequest/sr-62362"]) for i in (1, 2)]
    _, payload = post(client, h.book(body, *appts))
    assert response_errors(payload, "2.0.1") == []
    assert sorted(a["resource"]["id"] for a in payload["systemActions"]) == ["apt-1", "apt-2"]
    ids = {h.coverage_values(a)["coverage-assertion-id"][0] for a in payload["systemActions"]}
    assert len(ids) == 2  # distinct per resource
    _, payload = post(client, h.book(body, *appts, dialect="2.2"))
    assert response_errors(payload, "2.2") == []
    assert [a["resource"]["id"] for a in payload["systemActions"]] == ["sr-62362"]
    assert len(payload["cards"]) == 1


def test_the_appointments_other_orders_join_the_episode(client):
    """An implant Appointment based on the procedure and, by alternate-reference, its pump drug: the
    drug is part of the episode even when it is not in the record."""
    body = load_json(PUMP_SUPPORTED)
    ordered = h.evaluations(sign(client, body))["ServiceRequest/sr-62362"]
    based_on = ["ServiceRequest/sr-62362",
                {"extension": [{"url": h.ALTERNATE_REFERENCE, "valueReference": {"reference": "#drug"}}]}]
    drug = next(r for r in h.drafts(body) if r["resourceType"] == "MedicationRequest")
    appt = h.appointment("apt-pump", "pt-pump", based_on, contained=[{**drug, "id": "drug"}])
    request = h.book(body, appt)
    request["prefetch"]["medicationRequests"]["entry"] = [
        e for e in request["prefetch"]["medicationRequests"]["entry"] if e["resource"]["id"] != drug["id"]]
    status, payload = post(client, request)
    assert status == 200, payload
    assert h.outcome(h.evaluations(payload)["ServiceRequest/sr-62362"]) == h.outcome(ordered)
    assert [a["resource"]["id"] for a in payload["systemActions"]] == ["apt-pump"]  # the drug is context only


def test_booked_order_not_in_the_request_and_no_fhir_server_is_412(client):
    request = h.book_order(load_json(PUMP_SUPPORTED), "ServiceRequest/sr-62362")
    del request["prefetch"]["serviceRequests"]
    status, payload = post(client, request)
    assert status == 412
    assert payload["issue"][0]["expression"] == ["context.appointments.entry[0].resource.basedOn[0]"]


@pytest.mark.parametrize("dialect", ["2.0.1", "2.2"])
def test_booked_order_that_cannot_be_read_still_annotates_the_appointment(dialect):
    """The ServiceRequest is on a fhirServer off the allowlist (nothing is sent); the Coverage is in
    the prefetch, so the Appointment — the one resource we hold — gets the technical-failure
    coverage-information (contract §10.3), in both modes."""
    client = create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW}).test_client()
    request = h.book_order(load_json(PUMP_SUPPORTED), "ServiceRequest/sr-62362", dialect=dialect)
    del request["prefetch"]["serviceRequests"]
    request["fhirServer"] = "https://ehr.example.org/fhir"
    status, payload = post(client, request)
    assert status == 200, payload
    assert response_errors(payload, dialect) == []
    (card,) = payload["cards"]
    assert card["summary"] == "Coverage could not be evaluated"
    assert h.associated(card) == ["Appointment/apt-1"]
    (action,) = payload["systemActions"]
    assert action["resource"]["resourceType"] == "Appointment"
    values = h.coverage_values(action)
    assert values["covered"] == (["indeterminate"] if dialect == "2.2" else ["conditional"])


@pytest.mark.parametrize("mutate,where", [
    (lambda c: c.pop("appointments"), "context"),
    (lambda c: c["appointments"]["entry"][0]["resource"].pop("id"), "context.appointments.entry.0.resource"),
    (lambda c: c["appointments"]["entry"][0]["resource"].update(resourceType="ServiceRequest"),
     "context.appointments.entry.0.resource.resourceType"),
    (lambda c: c.update(userId="Device/x"), "context.userId"),
])
def test_malformed_context_is_400_naming_the_element(client, mutate, where):
    request = h.book_order(load_json(PUMP_SUPPORTED), "ServiceRequest/sr-62362")
    mutate(request["context"])
    status, payload = post(client, request)
    assert status == 400, payload
    assert payload["issue"][0]["expression"][0] == where


# -- the FHIR server path ---------------------------------------------------------------------------
TOKEN = "appointment-token-2d8b"


@pytest.fixture
def server_client(fhir_server):
    return create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW, "FHIR_ALLOWLIST": [fhir_server.base]}).test_client()


@pytest.mark.parametrize("body_path", [PUMP_SUPPORTED, COSMETIC], ids=["pump", "cosmetic"])
def test_booked_order_read_from_the_fhir_server(client, server_client, fhir_server, body_path):
    """No prefetch: the ServiceRequest behind the Appointment is read from the server, the rest queried."""
    body = load_json(body_path)
    ref = next(f"ServiceRequest/{r['id']}" for r in h.drafts(body) if r["resourceType"] == "ServiceRequest")
    ordered = h.evaluations(sign(client, body))[ref]
    fhir_server.checkout(body)
    signed = [{**r, "status": "active"} for r in h.drafts(body)]
    fhir_server.put_all(signed)
    try:
        request = copy.deepcopy(h.book_order(body, ref))
        request.pop("prefetch")
        request["fhirServer"] = fhir_server.base
        request["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                        "scope": "patient/*.read", "subject": "cds-coverage-service"}
        mark = fhir_server.proxy.mark()
        status, payload = post(server_client, request)
    finally:
        fhir_server.put_all([], delete=[(r["resourceType"], r["id"]) for r in signed])
    assert status == 200, payload
    assert response_errors(payload, "2.0.1") == []
    assert h.outcome(h.evaluations(payload)[ref]) == h.outcome(ordered)
    assert f"/fhir/{ref}" in [s.path for s in fhir_server.proxy.since(mark)]


def test_contained_order_in_crd_2_2_mode_is_annotated_on_the_appointment(client):
    """An order contained in the Appointment cannot be updated on its own: the Appointment carries it."""
    body = load_json(PUMP_SUPPORTED)
    ordered = h.evaluations(sign(client, body))["ServiceRequest/sr-62362"]
    sr = next(r for r in h.drafts(body) if r["id"] == "sr-62362")
    appt = h.appointment("apt-c", "pt-pump", ["#proc"], contained=[{**sr, "id": "proc", "status": "active"}])
    status, payload = post(client, h.book(body, appt, dialect="2.2"))
    assert status == 200, payload
    assert response_errors(payload, "2.2") == []
    (card,) = payload["cards"]
    assert card["extension"]["cds-coverage.evaluation"]["determination"] == ordered["determination"]
    assert h.associated(card) == ["Appointment/apt-c"]
    assert [a["resource"]["resourceType"] for a in payload["systemActions"]] == ["Appointment"]
