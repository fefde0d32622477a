"""order-dispatch-crd: the dispatched orders get the determination they got when signed.

A primary hook (CRD 2.0.1 hooks.html#hook-categories, req. 164/207): every dispatched order that
can be evaluated gets a card and a coverage-information systemAction on the order itself.  Three
context shapes are accepted (hook 1.0, the interim draft, hook 1.1).  Real requests through the
Flask client; the FHIR-server path against the real sekmet server (tests/fhir_server.py).
"""
from __future__ import annotations

import copy
import json

import pytest

import hook_requests as h
from cds_service import create_app
from conformance import response_errors
from conftest import EXAMPLES, FIXED_NOW, PEER_DATA, load_json

INFERNO = PEER_DATA / "inferno-crd-fixtures" / "order_dispatch_hook_request.json"
PUMP_IMPLANT = EXAMPLES / "cp-mp-173-2024/03-implant-nonmalignant-trial-50pct-supported.json"
PUMP_J2274 = EXAMPLES / "cp-mp-173-2024/11-episode-j2274-takes-pump-determination.json"
URL = "/cds-services/order-dispatch-crd"


def post(client, body):
    resp = client.post(URL, json=body)
    return resp.status_code, resp.get_json()


def sign(client, body) -> dict:
    resp = client.post("/cds-services/order-sign-crd", json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _sign_cases():
    """(example, order) for every card of every order-sign example: all five policy revisions."""
    out = []
    for folder in sorted(p for p in EXAMPLES.iterdir() if (p / "index.json").exists()):
        for entry in load_json(folder / "index.json"):
            if entry.get("hook", "order-sign") != "order-sign":
                continue
            body = load_json(folder / entry["file"])
            for res in h.drafts(body):
                out.append((f"{folder.name}/{entry['file']}", f"{res['resourceType']}/{res['id']}"))
    return out


SIGN_CASES = _sign_cases()


def test_discovery_lists_order_dispatch_with_prefetch(client):
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    svc = services["order-dispatch-crd"]
    assert svc["hook"] == "order-dispatch" and svc["title"] and svc["description"]
    assert svc["prefetch"]["serviceRequests"] == "ServiceRequest?patient={{context.patientId}}&status=draft,active,on-hold"
    assert svc["prefetch"]["deviceRequests"] == "DeviceRequest?patient={{context.patientId}}"
    assert svc["prefetch"]["coverage"] == "Coverage?patient={{context.patientId}}&status=active"
    for template in svc["prefetch"].values():
        assert template.count("{{") == template.count("{{context.patientId}}")


def test_inferno_fixture_gets_a_conformant_200(client):
    """The Inferno request (hook 1.0 shape) names ServiceRequest/example on https://example/r4, a
    server off the allowlist: nothing is sent, and the order that could not be obtained gets the
    technical-failure card naming it and why; no systemAction, since there is no order to update."""
    body = load_json(INFERNO)
    status, payload = post(client, body)
    assert status == 200, payload
    assert response_errors(payload, "2.0.1") == []
    (card,) = payload["cards"]
    assert card["summary"] == "Coverage could not be evaluated"
    assert h.associated(card) == ["ServiceRequest/example"]
    assert "ServiceRequest/example could not be obtained" in card["detail"]
    assert "may contact" in card["detail"]
    assert "systemActions" not in payload


@pytest.mark.parametrize("example,ref", SIGN_CASES, ids=[f"{e}:{r}" for e, r in SIGN_CASES])
def test_dispatched_order_gets_the_determination_it_got_when_signed(client, example, ref):
    """Every order of every example, dispatched alone once signed (the rest of its draft orders
    signed too, in the record): same determination, deciding criteria, advisories, revision, T0."""
    body = load_json(EXAMPLES / example)
    signed_eval = h.evaluations(sign(client, body))[ref]
    shape = ("1.0", "interim", "1.1")[SIGN_CASES.index((example, ref)) % 3]
    status, payload = post(client, h.dispatch(body, ref, shape=shape))
    assert status == 200, payload
    assert response_errors(payload, "2.0.1") == []
    (card,) = payload["cards"]
    assert h.outcome(card["extension"]["cds-coverage.evaluation"]) == h.outcome(signed_eval), card["detail"]
    assert h.associated(card) == [ref]
    (action,) = payload["systemActions"]  # primary hook: the order always gets its coverage-information
    record = next(r for r in h.drafts(body) if f"{r['resourceType']}/{r['id']}" == ref)
    assert h.without_coverage_information(action["resource"]) == {**record, "status": "active"}


@pytest.mark.parametrize("shape", ["1.0", "interim", "1.1"])
@pytest.mark.parametrize("dialect", ["2.0.1", "2.2"])
def test_pump_implant_dispatched_in_each_context_shape(client, shape, dialect):
    body = load_json(PUMP_IMPLANT)
    request = h.dispatch(body, "ServiceRequest/sr-62362", shape=shape)
    if dialect == "2.2":
        request["extension"] = dict(h.CRD_22)
    status, payload = post(client, request)
    assert status == 200, payload
    assert response_errors(payload, dialect) == []
    ev = h.evaluations(payload)["ServiceRequest/sr-62362"]
    assert ev["determination"] == "SUPPORTED" and ev["revision"] == "CP.MP.173-2024"
    (action,) = payload["systemActions"]
    assert action["resource"]["resourceType"] == "ServiceRequest" and action["resource"]["id"] == "sr-62362"
    assert h.coverage_values(action)["covered"] == ["covered"]


def test_pump_dme_dispatched_to_a_supplier(client):
    """The implantable pump itself (DeviceRequest E0783) dispatched to a DME supplier."""
    body = load_json(PUMP_IMPLANT)
    ev_signed = h.evaluations(sign(client, body))["DeviceRequest/dr-e0783"]
    status, payload = post(client, h.dispatch(body, "DeviceRequest/dr-e0783", performer="Organization/dme-supplier"))
    assert status == 200
    assert h.outcome(h.evaluations(payload)["DeviceRequest/dr-e0783"]) == h.outcome(ev_signed)
    assert payload["systemActions"][0]["resource"]["resourceType"] == "DeviceRequest"


def test_j2274_dispatched_alone_takes_the_determination_of_its_pump_episode(client):
    """J2274 alone is not governed (contract §3.2); dispatched while the pump order it goes with is
    open in the record, it takes that episode's determination, as it does in one draftOrders."""
    body = load_json(PUMP_J2274)
    signed_eval = h.evaluations(sign(client, body))["ServiceRequest/sr-j2274"]
    status, payload = post(client, h.dispatch(body, "ServiceRequest/sr-j2274"))
    assert status == 200
    (card,) = payload["cards"]
    ev = card["extension"]["cds-coverage.evaluation"]
    assert ev["determination"] == signed_eval["determination"] == "NOT_MEDICALLY_NECESSARY"
    assert "(episode of ServiceRequest/" in card["summary"]
    # Without the episode in the record it is J2274 alone: not governed.
    alone = h.dispatch(body, "ServiceRequest/sr-j2274")
    alone["prefetch"]["serviceRequests"]["entry"] = [
        e for e in alone["prefetch"]["serviceRequests"]["entry"] if e["resource"]["id"] == "sr-j2274"]
    alone["prefetch"]["deviceRequests"] = {"resourceType": "Bundle", "type": "searchset"}
    _, payload = post(client, alone)
    assert h.evaluations(payload)["ServiceRequest/sr-j2274"]["determination"] == "NOT_APPLICABLE"


def test_several_orders_dispatched_together(client):
    body = load_json(PUMP_IMPLANT)
    status, payload = post(client, h.dispatch(body, "ServiceRequest/sr-62362", "DeviceRequest/dr-e0783"))
    assert status == 200
    assert response_errors(payload, "2.0.1") == []
    assert set(h.evaluations(payload)) == {"ServiceRequest/sr-62362", "DeviceRequest/dr-e0783"}
    assert len(payload["systemActions"]) == 2


def test_dispatched_orders_sent_inline_as_a_bundle(client):
    """CRD 2.2's ballot logical model carries dispatchedOrders as a Bundle of the orders."""
    body = load_json(PUMP_IMPLANT)
    request = h.dispatch(body, "ServiceRequest/sr-62362")
    sr = next(e["resource"] for e in request["prefetch"]["serviceRequests"]["entry"] if e["resource"]["id"] == "sr-62362")
    request["context"]["dispatchedOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": sr}]}
    request["context"]["fulfillmentTasks"] = {"resourceType": "Bundle", "type": "collection",
                                              "entry": [{"resource": request["context"]["fulfillmentTasks"][0]}]}
    request["prefetch"]["serviceRequests"]["entry"] = [
        e for e in request["prefetch"]["serviceRequests"]["entry"] if e["resource"]["id"] != "sr-62362"]
    status, payload = post(client, request)
    assert status == 200, payload
    assert h.evaluations(payload)["ServiceRequest/sr-62362"]["determination"] == "SUPPORTED"


def test_order_sent_under_a_prefetch_key_of_the_clients_own(client):
    body = load_json(PUMP_IMPLANT)
    request = h.dispatch(body, "ServiceRequest/sr-62362")
    request["prefetch"]["dispatchedOrder"] = request["prefetch"].pop("serviceRequests")
    status, payload = post(client, request)
    assert status == 200
    assert h.evaluations(payload)["ServiceRequest/sr-62362"]["determination"] == "SUPPORTED"


def test_order_not_in_the_request_and_no_fhir_server_is_412(client):
    body = load_json(PUMP_IMPLANT)
    request = h.dispatch(body, "ServiceRequest/sr-62362", shape="1.0")
    del request["prefetch"]["serviceRequests"]
    status, payload = post(client, request)
    assert status == 412
    issue = payload["issue"][0]
    assert issue["expression"] == ["context.order"]
    assert "ServiceRequest/sr-62362 is not in the context or the prefetch" in issue["diagnostics"]


def test_an_order_of_another_patient_is_not_evaluated_or_updated(client):
    body = load_json(PUMP_IMPLANT)
    request = h.dispatch(body, "ServiceRequest/sr-62362")
    sr = next(e["resource"] for e in request["prefetch"]["serviceRequests"]["entry"] if e["resource"]["id"] == "sr-62362")
    sr["subject"] = {"reference": "Patient/someone-else"}
    status, payload = post(client, request)
    assert status == 200
    assert response_errors(payload, "2.0.1") == []
    (card,) = payload["cards"]
    assert card["summary"] == "Coverage could not be evaluated"
    assert "not an order for Patient/pt-pump" in card["detail"]
    assert "systemActions" not in payload


def test_not_applicable_order_still_gets_its_coverage_information(client):
    """Primary hook: coverage-information even when no policy governs the order."""
    body = load_json(EXAMPLES / "cp-mp-190-2023/23-oximeter-e0445-not-applicable.json")
    ref = "DeviceRequest/" + h.drafts(body)[0]["id"]
    status, payload = post(client, h.dispatch(body, ref))
    assert status == 200
    assert response_errors(payload, "2.0.1") == []
    values = h.coverage_values(payload["systemActions"][0])
    assert values["covered"] == ["conditional"] and values["info-needed"] == ["OTH"]
    request = h.dispatch(body, ref)
    request["extension"] = {"davinci-crd.configuration": {"coverage": False}}
    _, payload = post(client, request)
    assert payload["cards"] and "systemActions" not in payload  # configuration asked for cards only


def test_insufficient_documentation_on_dispatch_names_the_questionnaire(client):
    """Unlike order-select (secondary), order-dispatch is primary: doc-needed and questionnaire are kept."""
    body = load_json(EXAMPLES / "cp-mp-190-2023/13-adult-portable-mobility-unanswered-e1392.json")
    ref = "DeviceRequest/" + h.drafts(body)[0]["id"]
    _, payload = post(client, h.dispatch(body, ref))
    values = h.coverage_values(payload["systemActions"][0])
    assert values["doc-needed"] == ["clinical"]
    assert values["questionnaire"] == ["http://example.org/fhir/cds-coverage/Questionnaire/CP.MP.190-2023"]


@pytest.mark.parametrize("mutate,where", [
    (lambda c: c.pop("dispatchedOrders"), "context"),
    (lambda c: c.update(dispatchedOrders=[]), "context.dispatchedOrders"),
    (lambda c: c.update(dispatchedOrders=["not a reference"]), "context.dispatchedOrders"),
    (lambda c: c.update(performer=42), "context.performer"),
    (lambda c: c.update(fulfillmentTasks=[{"resourceType": "Patient"}]), "context.fulfillmentTasks"),
    (lambda c: c.pop("patientId"), "context"),
])
def test_malformed_context_is_400_naming_the_element(client, mutate, where):
    request = h.dispatch(load_json(PUMP_IMPLANT), "ServiceRequest/sr-62362")
    mutate(request["context"])
    status, payload = post(client, request)
    assert status == 400, payload
    assert payload["issue"][0]["expression"][0].startswith(where)


def test_unknown_context_elements_are_ignored(client):
    """CRD 2.0.1 req. 169 / 2.2 hook-23."""
    request = h.dispatch(load_json(PUMP_IMPLANT), "ServiceRequest/sr-62362")
    request["context"]["somethingNew"] = {"a": 1}
    status, _ = post(client, request)
    assert status == 200


def test_context_schema_accepts_the_inferno_fixture_and_all_three_shapes():
    import jsonschema

    from cds_service.validation import SCHEMAS

    schema = json.loads((SCHEMAS / "context-order-dispatch.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(load_json(INFERNO)["context"])) == []
    for shape in ("1.0", "interim", "1.1"):
        assert list(validator.iter_errors(h.dispatch(load_json(PUMP_IMPLANT), "ServiceRequest/sr-62362",
                                                     shape=shape)["context"])) == []


# -- the FHIR server path ---------------------------------------------------------------------------
TOKEN = "dispatch-token-5e1c"


@pytest.fixture
def server_client(fhir_server):
    return create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW, "FHIR_ALLOWLIST": [fhir_server.base]}).test_client()


@pytest.fixture
def record_on_server(fhir_server):
    """Put signed orders on the server for one test, then remove them (other tests query the same patients)."""
    put: list[tuple[str, str]] = []

    def write(resources):
        fhir_server.put_all(resources)
        put.extend((r["resourceType"], r["id"]) for r in resources)

    yield write
    if put:
        fhir_server.put_all([], delete=put)


def _server_request(request, server):
    out = copy.deepcopy(request)
    out.pop("prefetch", None)
    out["fhirServer"] = server.base
    out["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                "scope": "patient/*.read", "subject": "cds-coverage-service"}
    return out


@pytest.mark.parametrize("example,ref", [
    ("cp-mp-173-2024/03-implant-nonmalignant-trial-50pct-supported.json", "ServiceRequest/sr-62362"),
    ("cp-mp-173-2024/04-implant-nonmalignant-trial-49pct-not-medically-necessary.json", "ServiceRequest/sr-62362"),
    ("cp-mp-173-2024/11-episode-j2274-takes-pump-determination.json", "ServiceRequest/sr-j2274"),
    ("cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json", None),
    ("mg-oxy-2024/01-adult-copd-rest-spo2-88-e1390.json", None),
])
def test_dispatched_order_read_from_the_fhir_server(client, server_client, fhir_server, record_on_server, example, ref):
    """No prefetch: the service reads the dispatched order (GET {fhirServer}/{Type}/{id}) and queries
    what its policy needs; the determination is the one of order-sign with full prefetch."""
    body = load_json(EXAMPLES / example)
    ref = ref or f"DeviceRequest/{h.drafts(body)[0]['id']}"
    expected = h.outcome(h.evaluations(sign(client, body))[ref])
    fhir_server.checkout(body)
    record_on_server([{**r, "status": "active"} for r in h.drafts(body)])
    mark = fhir_server.proxy.mark()
    status, payload = post(server_client, _server_request(h.dispatch(body, ref), fhir_server))
    assert status == 200, payload
    assert response_errors(payload, "2.0.1") == []
    assert h.outcome(h.evaluations(payload)[ref]) == expected
    paths = [s.path for s in fhir_server.proxy.since(mark)]
    assert f"/fhir/{ref}" in paths
    assert all(s.authorization == f"Bearer {TOKEN}" for s in fhir_server.proxy.since(mark))


def test_order_the_fhir_server_does_not_have_is_a_technical_failure(server_client, fhir_server):
    body = load_json(PUMP_IMPLANT)
    fhir_server.checkout(body)
    request = h.dispatch(body, "ServiceRequest/sr-does-not-exist")
    status, payload = post(server_client, _server_request(request, fhir_server))
    assert status == 200, payload
    assert response_errors(payload, "2.0.1") == []
    (card,) = payload["cards"]
    assert card["summary"] == "Coverage could not be evaluated"
    assert "ServiceRequest/sr-does-not-exist could not be obtained: the FHIR server has no such resource" in card["detail"]
    assert "systemActions" not in payload


def test_fhir_server_off_the_allowlist_is_never_contacted(fhir_server):
    """The order is in the prefetch but the Coverage is not, and fhirServer is not allowlisted:
    nothing is sent (as for order-sign) and the order is a technical failure naming why."""
    app = create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW})
    body = load_json(PUMP_IMPLANT)
    request = h.dispatch(body, "ServiceRequest/sr-62362")
    del request["prefetch"]["coverage"]
    request["fhirServer"] = fhir_server.base
    mark = fhir_server.proxy.mark()
    status, payload = post(app.test_client(), request)
    assert status == 200, payload
    assert fhir_server.proxy.since(mark) == []
    (card,) = payload["cards"]
    assert card["summary"] == "Coverage could not be evaluated"
    assert "coverage (fhirServer is not a FHIR server this service may contact; nothing was sent)" in card["detail"]
