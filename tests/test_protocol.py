"""CDS Hooks / CRD protocol behaviour through the Flask test client."""
from __future__ import annotations

import copy
import json

import pytest

from conformance import card_errors, coverage_information_errors, response_errors
from conftest import EXAMPLES, load_json

SUPPORTED_EXAMPLE = EXAMPLES / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"
INSUFFICIENT_EXAMPLE = EXAMPLES / "cp-mp-190-2023/13-adult-portable-mobility-unanswered-e1392.json"
EXT = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"


def coverage_values(action: dict) -> dict:
    (ext,) = [e for e in action["resource"]["extension"] if e["url"] == EXT]
    out = {}
    for sub in ext["extension"]:
        value = next(v for k, v in sub.items() if k.startswith("value"))
        out.setdefault(sub["url"], []).append(value)
    return out


@pytest.fixture
def supported():
    return load_json(SUPPORTED_EXAMPLE)


def test_discovery_lists_the_six_crd_services_with_prefetch_and_crd_extensions(client):
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    services = {s["id"]: s for s in resp.get_json()["services"]}
    hooks = ("order-sign", "order-select", "order-dispatch", "appointment-book", "encounter-start", "encounter-discharge")
    assert set(services) == {f"{hook}-crd" for hook in hooks}
    for hook in hooks:
        assert services[f"{hook}-crd"]["hook"] == hook
    for svc in services.values():
        assert svc["title"] and svc["description"]
        prefetch = svc["prefetch"]
        by_reference = {"serviceRequests"} if svc["hook"] in ("order-dispatch", "appointment-book") else set()
        assert set(prefetch) == {
            "patient", "coverage", "observations", "questionnaireResponses", "conditions", "encounters",
            "procedures", "medicationRequests", "allergies", "devices", "deviceRequests", "diagnosticReports",
        } | by_reference
        assert prefetch["patient"] == "Patient/{{context.patientId}}"
        assert prefetch["coverage"] == "Coverage?patient={{context.patientId}}&status=active"
        assert "http://loinc.org|2703-7" in prefetch["observations"]
        assert "http://loinc.org|59408-5" in prefetch["observations"]
        for template in prefetch.values():  # root-level tokens only
            assert template.count("{{") == template.count("{{context.patientId}}")
        ext = svc["extension"]
        assert ext["davinci-crd.version"] == ["2.0", "2.2"]
        assert {o["code"] for o in ext["davinci-crd.configuration-options"]} == {"coverage", "advisories"}
        for option in ext["davinci-crd.configuration-options"]:
            assert {"code", "type", "name", "description", "default"} <= set(option)


def test_order_sign_supported_response_is_conformant(client, supported):
    resp = client.post("/cds-services/order-sign-crd", json=supported)
    assert resp.status_code == 200
    body = resp.get_json()
    assert response_errors(body, "2.0.1") == []
    (card,) = body["cards"]
    assert card["indicator"] == "info"
    assert card["source"]["label"] == "Centene-affiliated health plan"
    assert card["source"]["url"].startswith("https://")
    assert card["source"]["topic"]["system"] == "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp"
    assert len(card["summary"]) <= 139
    assert card["summary"] == "SUPPORTED: E1390 stationary oxygen (CP.MP.190 rev 01/23)"
    (action,) = body["systemActions"]
    assert action["type"] == "update" and action["description"]
    values = coverage_values(action)
    assert values["covered"] == ["covered"]
    assert values["pa-needed"] == ["no-auth"]
    assert values["date"] == ["2025-12-31"]
    # The order is returned unchanged except for the extension.
    order = supported["context"]["draftOrders"]["entry"][0]["resource"]
    returned = copy.deepcopy(action["resource"])
    returned["extension"] = [e for e in returned["extension"] if e["url"] != EXT]
    if not returned["extension"]:
        del returned["extension"]
    assert returned == order


def test_insufficient_documentation_names_questionnaire_and_doc_needed(client):
    body = load_json(INSUFFICIENT_EXAMPLE)
    resp = client.post("/cds-services/order-sign-crd", json=body)
    payload = resp.get_json()
    assert response_errors(payload, "2.0.1") == []
    values = coverage_values(payload["systemActions"][0])
    assert values["covered"] == ["conditional"]
    assert values["doc-needed"] == ["clinical"]
    assert values["info-needed"] == ["OTH"]
    assert values["questionnaire"] == ["http://example.org/fhir/cds-coverage/Questionnaire/CP.MP.190-2023"]
    assert "CP.MP.190-2023/I.F.1" in values["reason"][0]["text"]
    card = payload["cards"][0]
    assert card["indicator"] == "warning"
    assert "answer Questionnaire item `CP.MP.190-2023/I.F.1` (boolean)" in card["detail"]


def test_dialect_2_2_when_requested(client, supported):
    supported["extension"] = {"davinci-crd.requestedVersion": "2.2"}
    payload = client.post("/cds-services/order-sign-crd", json=supported).get_json()
    assert response_errors(payload, "2.2") == []
    assert payload["cards"][0]["source"]["topic"]["system"] == "http://terminology.hl7.org/CodeSystem/cdshooks-card-type"


def test_not_applicable_in_both_dialects(client):
    body = load_json(EXAMPLES / "cp-mp-190-2023/23-oximeter-e0445-not-applicable.json")
    v201 = coverage_values(client.post("/cds-services/order-sign-crd", json=body).get_json()["systemActions"][0])
    assert v201["covered"] == ["conditional"] and v201["pa-needed"] == ["conditional"] and v201["info-needed"] == ["OTH"]
    assert v201["reason"][0]["text"] == "No payer policy on file governs this order"
    body["extension"] = {"davinci-crd.requestedVersion": "2.2"}
    payload = client.post("/cds-services/order-sign-crd", json=body).get_json()
    v22 = coverage_values(payload["systemActions"][0])
    assert v22["covered"] == ["indeterminate"] and "pa-needed" not in v22
    assert payload["cards"][0]["summary"] == "NOT_APPLICABLE: no payer policy on file for E0445"
    assert payload["cards"][0]["indicator"] == "info"


def test_coverage_assertion_id_is_stable_and_differs_by_determination(client, supported):
    def assertion(body):
        return coverage_values(client.post("/cds-services/order-sign-crd", json=body).get_json()["systemActions"][0])[
            "coverage-assertion-id"][0]

    first, second = assertion(supported), assertion(copy.deepcopy(supported))
    assert first == second
    other = load_json(INSUFFICIENT_EXAMPLE)
    assert assertion(other) != first


def test_earlier_coverage_information_is_replaced(client, supported):
    order = supported["context"]["draftOrders"]["entry"][0]["resource"]
    cov_ref = order["insurance"][0]["reference"]
    order["extension"] = [
        {"url": EXT, "extension": [{"url": "coverage", "valueReference": {"reference": cov_ref}},
                                   {"url": "covered", "valueCode": "not-covered"}]},
        {"url": "http://example.org/other", "valueString": "kept"},
    ]
    action = client.post("/cds-services/order-sign-crd", json=supported).get_json()["systemActions"][0]
    exts = action["resource"]["extension"]
    assert [e["url"] for e in exts] == ["http://example.org/other", EXT]
    assert coverage_values(action)["covered"] == ["covered"]


def test_order_select_evaluates_only_selected_orders(client, supported):
    second = copy.deepcopy(supported["context"]["draftOrders"]["entry"][0])
    second["resource"]["id"] = "other-order"
    second["resource"]["codeCodeableConcept"]["coding"][0]["code"] = "E0431"
    supported["context"]["draftOrders"]["entry"].append(second)
    supported["hook"] = "order-select"
    supported["context"]["selections"] = ["DeviceRequest/other-order"]
    payload = client.post("/cds-services/order-select-crd", json=supported).get_json()
    assert [c["extension"]["davinci-crd.associated-resource"] for c in payload["cards"]] == [
        [{"reference": "DeviceRequest/other-order"}]]
    for action in payload.get("systemActions", []):
        values = coverage_values(action)
        assert "doc-needed" not in values and "questionnaire" not in values


def test_order_sign_evaluates_every_draft_order_including_ungoverned(client, supported):
    second = copy.deepcopy(supported["context"]["draftOrders"]["entry"][0])
    second["resource"]["id"] = "walker"
    second["resource"]["codeCodeableConcept"]["coding"][0]["code"] = "E0143"
    supported["context"]["draftOrders"]["entry"].append(second)
    payload = client.post("/cds-services/order-sign-crd", json=supported).get_json()
    assert response_errors(payload, "2.0.1") == []
    summaries = sorted(c["summary"] for c in payload["cards"])
    assert summaries == ["NOT_APPLICABLE: no payer policy on file for E0143",
                         "SUPPORTED: E1390 stationary oxygen (CP.MP.190 rev 01/23)"]
    assert len(payload["systemActions"]) == 2


def test_configuration_option_coverage_false_omits_system_actions(client, supported):
    supported["extension"] = {"davinci-crd.configuration": {"coverage": False, "unknown-option": 1}}
    payload = client.post("/cds-services/order-sign-crd", json=supported).get_json()
    assert "systemActions" not in payload and len(payload["cards"]) == 1


def test_configuration_option_of_wrong_type_is_400(client, supported):
    supported["extension"] = {"davinci-crd.configuration": {"coverage": "no"}}
    resp = client.post("/cds-services/order-sign-crd", json=supported)
    assert resp.status_code == 400
    assert "coverage" in resp.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "mutate,status,needle",
    [
        (lambda b: b.pop("hookInstance"), 400, "hookInstance"),
        (lambda b: b["context"].pop("patientId"), 400, "patientId"),
        (lambda b: b["context"].pop("draftOrders"), 400, "draftOrders"),
        (lambda b: b["context"].update(userId=42), 400, "userId"),
        (lambda b: b.update(hook="patient-view"), 400, "order-sign"),
        (lambda b: b["prefetch"]["coverage"]["entry"][0]["resource"]["payor"][0]["identifier"].update(value="acme"), 400, "payer"),
        (lambda b: (b.pop("prefetch"), b.pop("fhirServer", None)), 412, "prefetch"),
    ],
    ids=["no-hookInstance", "no-patientId", "no-draftOrders", "bad-userId", "wrong-hook", "unknown-payer", "no-data-no-server"],
)
def test_bad_requests_get_operation_outcomes(client, supported, mutate, status, needle):
    mutate(supported)
    resp = client.post("/cds-services/order-sign-crd", json=supported)
    assert resp.status_code == status
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert needle in body["issue"][0]["diagnostics"]


def test_two_matching_coverages_is_400_business_rule(client, supported):
    cov = copy.deepcopy(supported["prefetch"]["coverage"]["entry"][0])
    cov["resource"]["id"] = "second-coverage"
    supported["prefetch"]["coverage"]["entry"].append(cov)
    order = supported["context"]["draftOrders"]["entry"][0]["resource"]
    order.pop("insurance")
    resp = client.post("/cds-services/order-sign-crd", json=supported)
    assert resp.status_code == 400
    issue = resp.get_json()["issue"][0]
    assert issue["code"] == "business-rule" and issue["expression"] == ["Coverage.payor"]


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b"null", b"\xff\xfe", b""])
def test_malformed_json_is_400(client, raw):
    resp = client.post("/cds-services/order-sign-crd", data=raw, content_type="application/json")
    assert resp.status_code == 400
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_unknown_service_is_404(client, supported):
    resp = client.post("/cds-services/no-such-service", json=supported)
    assert resp.status_code == 404
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_wrong_method_is_405_outcome(client):
    resp = client.delete("/cds-services")
    assert resp.status_code == 405
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_questionnaire_served_with_every_attestable_item(client):
    resp = client.get("/fhir/Questionnaire/CP.MP.190-2023")
    assert resp.status_code == 200
    q = resp.get_json()
    assert q["url"] == "http://example.org/fhir/cds-coverage/Questionnaire/CP.MP.190-2023"
    items = {i["linkId"]: i["type"] for i in q["item"]}
    assert items["CP.MP.190-2023/I.E"] == "boolean"
    assert items["CP.MP.190-2023/ROUTE#initial-group"] == "integer"
    assert items["CP.MP.190-2023/III.A#eval"] == "date"
    assert client.get("/fhir/Questionnaire/nope").status_code == 404


def test_every_card_has_uuid_and_evaluation_extension(client, example_index):
    for scenario in example_index:
        payload = client.post("/cds-services/order-sign-crd", json=load_json(EXAMPLES / scenario["file"])).get_json()
        for card in payload["cards"]:
            assert card_errors(card, "2.0.1") == []
            ev = card["extension"]["cds-coverage.evaluation"]
            assert ev["determination"] in {"SUPPORTED", "NOT_MEDICALLY_NECESSARY", "INSUFFICIENT_DOCUMENTATION", "NOT_APPLICABLE"}
            ids = {c["id"] for c in ev["criteria"]}
            assert set(ev["deciding"]) <= ids
        for action in payload.get("systemActions", []):
            (ext,) = [e for e in action["resource"]["extension"] if e["url"] == EXT]
            assert coverage_information_errors(ext, "2.0.1") == []


@pytest.mark.parametrize(
    "element,value,needle",
    [
        ("authoredOn", "yesterday", "authoredOn"),
        ("codeCodeableConcept", {"coding": "E1390"}, "codeCodeableConcept.coding"),
        ("insurance", "Coverage/1", "insurance"),
    ],
)
def test_malformed_draft_order_elements_are_400_naming_the_element(client, supported, element, value, needle):
    supported["context"]["draftOrders"]["entry"][0]["resource"][element] = value
    resp = client.post("/cds-services/order-sign-crd", json=supported)
    assert resp.status_code == 400
    issue = resp.get_json()["issue"][0]
    assert issue["expression"] == [f"context.draftOrders.entry[0].resource.{needle}"]


def test_draft_order_missing_unread_required_elements_is_still_evaluated(client, supported):
    """Real EHRs send drafts without `intent`; the evaluation does not read it."""
    supported["context"]["draftOrders"]["entry"][0]["resource"].pop("intent", None)
    resp = client.post("/cds-services/order-sign-crd", json=supported)
    assert resp.status_code == 200
    assert resp.get_json()["cards"][0]["summary"].startswith("SUPPORTED")


def test_decision_log_has_no_patient_data(client, supported, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="cds_service")
    client.post("/cds-services/order-sign-crd", json=supported)
    text = caplog.text
    assert "decision" in text and "CP.MP.190-2023" in text
    patient = supported["prefetch"]["patient"]
    for value in (patient["id"], patient["name"][0]["family"], patient["birthDate"], supported["context"]["patientId"]):
        assert value not in text
    for entry in supported["prefetch"]["observations"]["entry"]:
        assert entry["resource"]["id"] not in text


def test_insufficient_card_links_the_questionnaire_and_it_resolves(client):
    payload = client.post("/cds-services/order-sign-crd", json=load_json(INSUFFICIENT_EXAMPLE)).get_json()
    (link,) = payload["cards"][0]["links"]
    assert link["type"] == "absolute"
    assert link["url"] == "http://localhost/fhir/Questionnaire/CP.MP.190-2023"
    q = client.get(link["url"].replace("http://localhost", "")).get_json()
    assert q["resourceType"] == "Questionnaire"
    assert "CP.MP.190-2023/I.F.1" in {i["linkId"] for i in q["item"]}


def test_questionnaire_search_by_canonical(client):
    canonical = "http://example.org/fhir/cds-coverage/Questionnaire/CP.MP.190-2023"
    bundle = client.get("/fhir/Questionnaire", query_string={"url": canonical}).get_json()
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["url"] == canonical
    assert client.get("/fhir/Questionnaire", query_string={"url": "http://nowhere/Q"}).get_json()["total"] == 0


def test_supported_card_has_no_questionnaire_link(client, supported):
    card = client.post("/cds-services/order-sign-crd", json=supported).get_json()["cards"][0]
    assert "links" not in card


def test_trace_is_recorded_by_hook_instance_with_card_and_assertion(app, client, supported):
    payload = client.post("/cds-services/order-sign-crd", json=supported).get_json()
    (trace,) = app.extensions["cds_decisions"].get(supported["hookInstance"])
    assert trace["revision"] == "CP.MP.190-2023" and trace["determination"] == "SUPPORTED"
    assert trace["cardUuid"] == payload["cards"][0]["uuid"]
    values = coverage_values(payload["systemActions"][0])
    assert trace["coverageAssertionId"] == values["coverage-assertion-id"][0]
    assert {n["id"] for n in trace["nodes"]} >= {"CP.MP.190-2023/I.B.1.a", "CP.MP.190-2023/I.E"}
    assert json.dumps(trace).count(supported["prefetch"]["patient"]["name"][0]["family"]) == 0
