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
HOOK_SERVICES = {"order-sign": "order-sign-crd", "order-select": "order-select-crd"}


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
        assert payload["cards"], "every evaluated order gets a card"
    else:
        assert 400 <= resp.status_code < 500
        assert payload["resourceType"] == "OperationOutcome"
        assert payload["issue"][0]["diagnostics"]
