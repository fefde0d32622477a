"""The OpenAPI description matches the application's routes; Schemathesis finds no 5xx."""
from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from cds_service import create_app

APP = create_app({"TESTING": True})


def _flask_paths(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue  # the web console's HTML pages (/console) are not part of the API
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((path, method.lower()))
    return out


def test_openapi_lists_exactly_the_routes_of_the_app(client):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == _flask_paths(client.application)


schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)
TRIED = {"n": 0}


@schema.parametrize()
# Derandomized: the suite is reproducible; `make fuzz` explores further.
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_and_every_4xx_is_an_operation_outcome(case):
    response = case.call()
    TRIED["n"] += 1
    assert response.status_code < 500, response.text[:500]
    if 400 <= response.status_code < 500:
        body = response.json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"], body


def test_decision_ids_beyond_64_bits_are_404_not_500(client):
    resp = client.get(f"/api/decisions/{2**63}")
    assert resp.status_code == 404
    assert resp.get_json()["resourceType"] == "OperationOutcome"
