"""Every fhir_examples scenario gets the determination, deciding criteria and advisories it documents."""
from __future__ import annotations

import pytest

from conformance import response_errors
from conftest import EXAMPLES, load_json

INDEX = [
    {**entry, "file": f"{folder.name}/{entry['file']}", "policy": folder.name}
    for folder in sorted(p for p in EXAMPLES.iterdir() if (p / "index.json").exists())
    for entry in load_json(folder / "index.json")
]


@pytest.mark.parametrize("scenario", INDEX, ids=[s["file"] for s in INDEX])
def test_scenario_gets_documented_determination(client, scenario):
    body = load_json(EXAMPLES / scenario["file"])
    service = {"order-select": "order-select-crd"}.get(scenario.get("hook"), "order-sign-crd")
    resp = client.post(f"/cds-services/{service}", json=body)
    assert resp.status_code == 200, resp.get_json()
    payload = resp.get_json()
    assert response_errors(payload, "2.0.1") == []
    order = scenario.get("order")  # which draft order the expectation is about (default: the only one)
    cards = [c for c in payload["cards"] if not order or c["extension"]["davinci-crd.associated-resource"][0]["reference"] == order]
    (card,) = cards
    ev = card["extension"]["cds-coverage.evaluation"]
    expected = scenario["expected"]
    assert ev["determination"] == expected["determination"]
    assert set(expected.get("deciding", [])) <= set(ev["deciding"]), card["detail"]
    assert set(expected.get("advisories", [])) <= set(ev["advisories"])
    assert card["summary"].startswith(expected["determination"] + ":")
    for criterion in expected.get("deciding", []):
        assert f"`{criterion}`" in card["detail"]


@pytest.mark.parametrize("policy", sorted({s["policy"] for s in INDEX}))
def test_each_policy_has_ten_scenarios_and_every_determination(policy):
    scenarios = [s for s in INDEX if s["policy"] == policy]
    assert len(scenarios) >= 10
    determinations = {s["expected"]["determination"] for s in scenarios}
    assert determinations == {"SUPPORTED", "NOT_MEDICALLY_NECESSARY", "INSUFFICIENT_DOCUMENTATION", "NOT_APPLICABLE"}


def test_oxygen_examples_cover_adult_pediatric_initial_reauth_portable():
    oxygen = [s for s in INDEX if s["policy"] == "cp-mp-190-2023"]
    assert len(oxygen) >= 12
    files = " ".join(s["file"] for s in oxygen)
    for word in ("adult", "pediatric", "reauth", "portable"):
        assert word in files or word in " ".join(s["description"] for s in oxygen)
