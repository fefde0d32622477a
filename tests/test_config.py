"""create_app(config): defaults, then CDS_* environment variables, then the mapping."""
from __future__ import annotations

from cds_service import create_app


def test_environment_overrides_defaults_and_mapping_overrides_environment(monkeypatch):
    monkeypatch.setenv("CDS_PAYER_ID_SYSTEM", "urn:example:payers")
    monkeypatch.setenv("CDS_CRD_VERSIONS", '["2.0"]')
    app = create_app()
    assert app.config["PAYER_ID_SYSTEM"] == "urn:example:payers"
    assert app.config["CRD_VERSIONS"] == ["2.0"]
    assert app.config["TIMEZONE"] == "UTC"
    app = create_app({"PAYER_ID_SYSTEM": "urn:other", "lowercase": "ignored"})
    assert app.config["PAYER_ID_SYSTEM"] == "urn:other"
    assert "lowercase" not in app.config
    assert app.test_client().get("/cds-services").get_json()["services"][0]["extension"]["davinci-crd.version"] == ["2.0"]


def test_discovery_reflects_configured_versions():
    app = create_app({"CRD_VERSIONS": ["2.0"]})
    services = app.test_client().get("/cds-services").get_json()["services"]
    assert all(s["extension"]["davinci-crd.version"] == ["2.0"] for s in services)


def test_configured_payer_identifier_system_is_used_for_routing(client):
    import json

    from conftest import EXAMPLES

    body = json.loads((EXAMPLES / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json").read_text())
    app = create_app({"PAYER_ID_SYSTEM": "urn:other"})
    resp = app.test_client().post("/cds-services/order-sign-crd", json=body)
    assert resp.status_code == 400
    assert "urn:other" in resp.get_json()["issue"][0]["diagnostics"]
