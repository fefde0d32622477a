"""Replay every hook request found in ../shared/peer-data: 200 with conformant cards or a clear 4xx."""
from __future__ import annotations

from pathlib import Path

import pytest

from conformance import response_errors
from conftest import PEER_DATA, load_json


def _hook_requests():
    out = []
    for path in sorted(PEER_DATA.rglob("*.json")):
        data = load_json(path)
        if not isinstance(data, dict):
            continue
        body = data.get("body") if isinstance(data.get("body"), dict) else data
        if isinstance(body.get("hook"), str) and "context" in body:
            out.append((path, data.get("path"), body))
    return out


REQUESTS = _hook_requests()
HOOK_SERVICES = {"order-sign": "order-sign-crd", "order-select": "order-select-crd", "order-dispatch": "order-dispatch-crd",
                 "appointment-book": "appointment-book-crd", "encounter-start": "encounter-start-crd",
                 "encounter-discharge": "encounter-discharge-crd"}
SECONDARY_ENCOUNTER_HOOKS = ("encounter-start", "encounter-discharge")
INFERNO_200 = ("appointment_book_hook_request.json", "order_dispatch_hook_request.json",
               "encounter_start_hook_request.json", "encounter_discharge_hook_request.json")


def test_peer_data_holds_hook_requests():
    assert len(REQUESTS) >= 20


@pytest.mark.parametrize("path,captured_path,body", REQUESTS, ids=[str(p.relative_to(PEER_DATA)) for p, _, _ in REQUESTS])
def test_replay(client, path: Path, captured_path, body):
    url = captured_path or f"/cds-services/{HOOK_SERVICES.get(body['hook'], 'order-sign-crd')}"
    resp = client.post(url, json=body)
    assert resp.status_code < 500
    payload = resp.get_json()
    if resp.status_code == 200:
        dialect = "2.2" if str((body.get("extension") or {}).get("davinci-crd.requestedVersion")) == "2.2" else "2.0.1"
        assert response_errors(payload, dialect) == []
        if body["hook"] not in SECONDARY_ENCOUNTER_HOOKS:  # these may have nothing useful to say
            assert payload["cards"], "every evaluated order gets a card"
    else:
        assert 400 <= resp.status_code < 500
        assert payload["resourceType"] == "OperationOutcome"
        assert payload["issue"][0]["diagnostics"]


@pytest.mark.parametrize("name", INFERNO_200)
def test_inferno_fixtures_of_the_new_hooks_get_200(client, name):
    """The Inferno appointment-book, order-dispatch and encounter requests get conformant 200 answers."""
    body = load_json(PEER_DATA / "inferno-crd-fixtures" / name)
    resp = client.post(f"/cds-services/{HOOK_SERVICES[body['hook']]}", json=body)
    assert resp.status_code == 200, resp.get_json()
    assert response_errors(resp.get_json(), "2.0.1") == []
