"""The service's own FHIR queries against a real FHIR R4 server (sekmet-fhir, tests/fhir_server.py).

The bar: every example gets the same determination with full prefetch, with no prefetch (the
service queries and reads what it needs), and with sandbox-style empty-Bundle keys; the
queries are the contract's (§4.2); keys no policy needs are not queried; references are read
only when nothing given resolves them; the key semantics of §4.1 hold.
"""
from __future__ import annotations

import copy
import json
import logging
import uuid
from datetime import date, timedelta

import pytest

from cds_service import create_app
from cds_service.gather import reference_target
from cds_service.fhir_client import Allowlist, normalize_base, under_base
from cds_service.sansio.records import PREFETCH_TYPES, KeyState, key_state
from conftest import EXAMPLES as EXAMPLE_DIR
from conftest import FIXED_NOW, PEER_DATA, load_json
from fhir_server import example_files, request_resources

EXAMPLES = example_files()
EX01 = EXAMPLE_DIR / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"  # SUPPORTED, T0 2025-03-14
TOKEN = "gathering-token-7f3a9c1e"
EMPTY_BUNDLE = {"resourceType": "Bundle", "type": "searchset", "total": 0}


@pytest.fixture
def app(fhir_server):
    return create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW, "FHIR_ALLOWLIST": [fhir_server.base]})


@pytest.fixture
def client(app):
    return app.test_client()


def service_of(body) -> str:
    return "order-select-crd" if body.get("hook") == "order-select" else "order-sign-crd"


def with_server(body, server, prefetch="keep", token=TOKEN) -> dict:
    out = copy.deepcopy(body)
    out["hookInstance"] = str(uuid.uuid4())
    out["fhirServer"] = server.base
    if token is not None:
        out["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "patient/*.read", "subject": "cds-coverage-service"}
    if prefetch != "keep":
        if prefetch is None:
            out.pop("prefetch", None)
        else:
            out["prefetch"] = prefetch
    return out


def outcomes(payload) -> list[tuple]:
    """Per card: order, determination, deciding criteria, advisories."""
    out = []
    for card in payload["cards"]:
        ev = card["extension"]["cds-coverage.evaluation"]
        out.append((ev["order"], ev["determination"], tuple(ev["deciding"]), tuple(sorted(ev["advisories"]))))
    return sorted(out)


def call(client, body):
    resp = client.post(f"/cds-services/{service_of(body)}", json=body)
    return resp.status_code, resp.get_json()


def searches(seen) -> set[str]:
    """Resource types searched (GET /fhir/{Type}?...), as opposed to read."""
    return {s.resource_type for s in seen if "?" in s.path or s.path.rstrip("/").count("/") == 2}


def sandbox_style(body) -> dict:
    """What the CDS Hooks sandbox sends: an empty Bundle for each key it had nothing for, no other keys."""
    prefetch = {}
    for key, value in (body.get("prefetch") or {}).items():
        if key in PREFETCH_TYPES and key_state(value, PREFETCH_TYPES[key]) == KeyState.EMPTY:
            prefetch[key] = dict(EMPTY_BUNDLE)
    return prefetch


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}/{p.name}" for p in EXAMPLES])
def test_same_determination_with_full_no_and_sandbox_prefetch(client, app, fhir_server, path):
    example = load_json(path)
    fhir_server.checkout(example)

    mark = fhir_server.proxy.mark()
    status, full = call(client, with_server(example, fhir_server))
    assert status == 200, full
    full_requests = fhir_server.proxy.since(mark)
    assert searches(full_requests) == set(), "full prefetch: no key is queried"

    mark = fhir_server.proxy.mark()
    body = with_server(example, fhir_server, prefetch=None)
    status, none = call(client, body)
    assert status == 200, none
    seen = fhir_server.proxy.since(mark)
    assert seen, "no prefetch: the service queried the FHIR server"
    assert all(s.authorization == f"Bearer {TOKEN}" for s in seen)
    assert outcomes(none) == outcomes(full), "no prefetch"
    (trace, *_) = app.extensions["cds_decisions"].get(body["hookInstance"])
    assert trace["fhir"]["errors"] == {} and not trace["fhir"]["deadlineHit"]

    mark = fhir_server.proxy.mark()
    empty_keys = sandbox_style(example)
    status, sandbox = call(client, with_server(example, fhir_server, prefetch=empty_keys))
    assert status == 200, sandbox
    queried = searches(fhir_server.proxy.since(mark))
    assert not queried & {PREFETCH_TYPES[k] for k in empty_keys}, "an empty Bundle means no data and no query"
    assert outcomes(sandbox) == outcomes(full), "sandbox-style empty Bundles"


def test_examples_cover_every_policy_folder():
    folders = {p.parent.name for p in EXAMPLES}
    assert {"cp-mp-190-2023"} <= folders and len(EXAMPLES) >= 20


def test_contract_queries_are_sent_date_bounded_with_the_bearer_token(client, fhir_server):
    example = load_json(EX01)
    fhir_server.checkout(example)
    mark = fhir_server.proxy.mark()
    status, _ = call(client, with_server(example, fhir_server, prefetch=None))
    assert status == 200
    seen = fhir_server.proxy.since(mark)
    by_type: dict = {}
    for s in seen:
        if "?" in s.path:
            by_type.setdefault(s.resource_type, s)  # the first request (later ones are next pages)
    t0 = date.fromisoformat(example["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"][:10])
    since = (t0 - timedelta(days=365)).isoformat()
    obs = by_type["Observation"].query
    assert obs["patient"] == [example["context"]["patientId"]]
    assert obs["date"] == [f"ge{since}"] and obs["_count"] == ["200"]
    codes = obs["code"][0].split(",")
    assert "http://loinc.org|59408-5" in codes and "http://loinc.org|2703-7" in codes
    assert by_type["Encounter"].query["date"] == [f"ge{since}"]
    assert by_type["Coverage"].query == {"patient": [example["context"]["patientId"]], "status": ["active"]}
    assert by_type["QuestionnaireResponse"].query == {
        "subject": [f"Patient/{example['context']['patientId']}"], "status": ["completed,amended"]}
    assert any(s.path.endswith(f"/Patient/{example['context']['patientId']}") for s in seen)
    # keys CP.MP.190 does not list are not queried
    assert not {"MedicationRequest", "AllergyIntolerance", "Device"} & set(by_type)
    # the performer the Observation names is read (it was given as an _include in the prefetch)
    assert any(s.path.endswith("/Practitioner/pr-okafor") for s in seen)
    assert {s.authorization for s in seen} == {f"Bearer {TOKEN}"}


def test_no_policy_no_patient_data_queries(client, fhir_server):
    """An order no policy governs needs its Coverage only."""
    path = next(p for p in EXAMPLES if p.name.startswith("23-oximeter"))
    example = load_json(path)
    fhir_server.checkout(example)
    mark = fhir_server.proxy.mark()
    status, payload = call(client, with_server(example, fhir_server, prefetch=None))
    assert status == 200 and payload["cards"][0]["extension"]["cds-coverage.evaluation"]["determination"] == "NOT_APPLICABLE"
    assert searches(fhir_server.proxy.since(mark)) == {"Coverage"}


def test_given_references_are_not_read_again(client, fhir_server):
    example = load_json(EX01)
    fhir_server.checkout(example)
    mark = fhir_server.proxy.mark()
    body = with_server(example, fhir_server, prefetch=None)
    practitioner = next(r for r in request_resources(example) if r["resourceType"] == "Practitioner")
    enc = example["prefetch"]["encounters"]
    body["prefetch"] = {"encounters": copy.deepcopy(enc)}  # carries the Practitioner and Organization (_include)
    status, _ = call(client, body)
    assert status == 200
    seen = fhir_server.proxy.since(mark)
    assert not any(s.path.endswith(f"/Practitioner/{practitioner['id']}") for s in seen)
    assert "Encounter" not in searches(seen)


def test_null_key_is_no_data_and_operation_outcome_key_is_queried(client, fhir_server):
    example = load_json(EX01)
    fhir_server.checkout(example)
    prefetch = copy.deepcopy(example["prefetch"])
    prefetch["observations"] = None
    prefetch["conditions"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    mark = fhir_server.proxy.mark()
    status, payload = call(client, with_server(example, fhir_server, prefetch=prefetch))
    assert status == 200
    assert searches(fhir_server.proxy.since(mark)) == {"Condition"}
    ev = payload["cards"][0]["extension"]["cds-coverage.evaluation"]
    assert ev["determination"] != "SUPPORTED"  # the qualifying SpO2 is not in the data given


def test_empty_bundle_for_a_key_with_data_is_honoured_without_a_query(client, fhir_server):
    """The sandbox sends an empty Bundle for a key it could not resolve: no data, and no query."""
    example = load_json(EX01)
    fhir_server.checkout(example)
    prefetch = copy.deepcopy(example["prefetch"])
    prefetch["observations"] = dict(EMPTY_BUNDLE)
    mark = fhir_server.proxy.mark()
    status, payload = call(client, with_server(example, fhir_server, prefetch=prefetch))
    assert status == 200
    assert "Observation" not in searches(fhir_server.proxy.since(mark))
    assert payload["cards"][0]["extension"]["cds-coverage.evaluation"]["determination"] == "INSUFFICIENT_DOCUMENTATION"


def _peer_requests():
    out = []
    for path in sorted((PEER_DATA / "captured-hooks").glob("*.json")):
        data = load_json(path)
        body = data.get("body") or {}
        if body.get("hook") in ("order-sign", "order-select") and data.get("path", "").endswith("-crd"):
            out.append((path.name, body))
    return out


@pytest.mark.parametrize("name,body", _peer_requests(), ids=[n for n, _ in _peer_requests()])
def test_peer_clients_requests_get_the_same_answer_with_and_without_their_prefetch(client, fhir_server, name, body):
    """The CRD request generator and the sandbox prefetch little; the test-ehr patients are on the server."""
    status_given, given = call(client, with_server(body, fhir_server, token=None))
    status_none, none = call(client, with_server(body, fhir_server, prefetch=None, token=None))
    assert status_given == status_none
    assert status_given < 500
    if status_given == 200:
        assert outcomes(given) == outcomes(none)
    else:
        assert given["issue"][0]["diagnostics"] == none["issue"][0]["diagnostics"]


def test_peer_patient_coverage_payor_is_read_from_the_server(client, fhir_server):
    """pat013's Coverage names Organization/org1234 by reference: the service reads it, then routes."""
    _, body = next((n, b) for n, b in _peer_requests() if "order-sign" in n)
    mark = fhir_server.proxy.mark()
    status, payload = call(client, with_server(body, fhir_server, prefetch=None, token=None))
    seen = fhir_server.proxy.since(mark)
    assert any(s.path.endswith("/Organization/org1234") for s in seen)
    assert "Coverage" in searches(seen)
    assert all(s.authorization is None for s in seen)  # no token given: no Authorization header
    # CMS is not a payer this service knows (contract §2.2): a clear 400, not a guess
    assert status == 400 and "payer" in payload["issue"][0]["diagnostics"]


def test_no_server_and_missing_key_is_412_naming_the_key(client):
    example = load_json(EX01)
    body = copy.deepcopy(example)
    body.pop("fhirServer", None)
    del body["prefetch"]["observations"]
    resp = client.post("/cds-services/order-sign-crd", json=body)
    assert resp.status_code == 412
    issue = resp.get_json()["issue"][0]
    assert "observations" in issue["diagnostics"] and issue["expression"] == ["prefetch.observations"]


def test_token_required_and_absent_is_412_and_nothing_is_sent(fhir_server):
    app = create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW,
                      "FHIR_ALLOWLIST": [{"url": fhir_server.base, "token_required": True}]})
    example = load_json(EX01)
    mark = fhir_server.proxy.mark()
    resp = app.test_client().post("/cds-services/order-sign-crd",
                                  json=with_server(example, fhir_server, prefetch=None, token=""))
    assert resp.status_code == 412
    assert "access_token" in resp.get_json()["issue"][0]["diagnostics"]
    assert fhir_server.proxy.since(mark) == []


def test_token_never_in_logs_traces_or_bodies(client, app, fhir_server, caplog):
    caplog.set_level(logging.DEBUG)
    example = load_json(EX01)
    fhir_server.checkout(example)
    body = with_server(example, fhir_server, prefetch=None)
    status, payload = call(client, body)
    assert status == 200
    traces = app.extensions["cds_decisions"].get(body["hookInstance"])
    text = caplog.text + json.dumps(payload) + json.dumps(traces, default=str)
    text += "".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert TOKEN not in text
    # nor the patient's id in the request lines urllib3 logs at DEBUG
    assert example["context"]["patientId"] not in caplog.text


# -- pure helpers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("url,expected", [
    ("https://EHR.example.org:443/fhir/", "https://ehr.example.org/fhir"),
    ("http://127.0.0.1:8090/fhir", "http://127.0.0.1:8090/fhir"),
    ("https://user:pw@ehr.example.org/fhir", None),
    ("https://ehr.example.org/fhir?x=1", None),
    ("ftp://ehr.example.org/fhir", None),
    ("https://ehr.example.org/fhir/../admin", None),
    ("", None),
])
def test_normalize_base(url, expected):
    assert normalize_base(url) == expected


def test_under_base_and_reference_targets():
    base = "https://ehr.example.org/fhir"
    assert under_base("https://ehr.example.org/fhir/Observation?page=2", base)
    assert not under_base("https://ehr.example.org/fhir-evil/Observation", base)
    assert not under_base("https://ehr.example.org.evil.org/fhir/Observation", base)
    assert not under_base("http://ehr.example.org/fhir/Observation", base)  # scheme downgrade
    assert reference_target("Practitioner/p1", base) == ("Practitioner", "p1")
    assert reference_target("https://ehr.example.org/fhir/Organization/o1/_history/2", base) == ("Organization", "o1")
    assert reference_target("https://other.example.org/fhir/Organization/o1", base) is None
    assert reference_target("#contained", base) is None
    assert reference_target("urn:uuid:1234", base) is None
    assert reference_target("Patient/../../admin", base) is None


def test_allowlist_entries():
    allow = Allowlist(["https://ehr.example.org/fhir/", {"url": "https://b.example.org/r4", "token_required": True}])
    assert allow.lookup("https://ehr.example.org/fhir").token_required is False
    assert allow.lookup("https://B.example.org/r4/").token_required is True
    assert allow.lookup("https://ehr.example.org/fhir/tenant2") is None
    with pytest.raises(ValueError):
        Allowlist(["https://user@ehr.example.org/fhir"])
