"""Every fhir_examples scenario gets the determination, deciding criteria and advisories it documents."""
from __future__ import annotations

import pytest

from conformance import response_errors
from conftest import EXAMPLES, load_json

INDEX = load_json(EXAMPLES / "index.json")


@pytest.mark.parametrize("scenario", INDEX, ids=[s["file"] for s in INDEX])
def test_scenario_gets_documented_determination(client, scenario):
    body = load_json(EXAMPLES / scenario["file"])
    resp = client.post("/cds-services/order-sign-crd", json=body)
    assert resp.status_code == 200, resp.get_json()
    payload = resp.get_json()
    assert response_errors(payload, "2.0.1") == []
    (card,) = payload["cards"]
    ev = card["extension"]["cds-coverage.evaluation"]
    expected = scenario["expected"]
    assert ev["determination"] == expected["determination"]
    assert set(expected.get("deciding", [])) <= set(ev["deciding"]), card["detail"]
    assert set(expected.get("advisories", [])) <= set(ev["advisories"])
    assert card["summary"].startswith(expected["determination"] + ":")
    for criterion in expected.get("deciding", []):
        assert f"`{criterion}`" in card["detail"]


def test_examples_cover_every_determination_adult_pediatric_initial_reauth():
    determinations = {s["expected"]["determination"] for s in INDEX}
    assert determinations == {"SUPPORTED", "NOT_MEDICALLY_NECESSARY", "INSUFFICIENT_DOCUMENTATION", "NOT_APPLICABLE"}
    assert len(INDEX) >= 12
    files = " ".join(s["file"] for s in INDEX)
    for word in ("adult", "pediatric", "reauth", "portable"):
        assert word in files or word in " ".join(s["description"] for s in INDEX)
