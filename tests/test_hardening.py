"""Edge hardening: CORS, JSON only, body size and nesting limits — never a 500."""
from __future__ import annotations

import json
import logging

import pytest

from cds_service import create_app
from cds_service.hardening import json_depth
from cds_service.logs import JsonFormatter
from conftest import EXAMPLES, load_json

BODY = EXAMPLES / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"


def test_cors_preflight_and_response_headers(client):
    pre = client.options("/cds-services/order-sign-crd", headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    resp = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert resp.headers["Access-Control-Allow-Origin"]


def test_cors_origins_are_configurable():
    app = create_app({"CORS_ORIGINS": ["https://ehr.example.org"]})
    c = app.test_client()
    ok = c.get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert ok.headers.get("Access-Control-Allow-Origin") == "https://ehr.example.org"
    other = c.get("/cds-services", headers={"Origin": "https://evil.example.org"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_non_json_content_type_is_415(client):
    resp = client.post("/cds-services/order-sign-crd", data=BODY.read_bytes(), content_type="text/plain")
    assert resp.status_code == 415
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_body_over_limit_is_413():
    app = create_app({"MAX_CONTENT_LENGTH": 1000})
    resp = app.test_client().post("/cds-services/order-sign-crd", data=BODY.read_bytes(), content_type="application/json")
    assert resp.status_code == 413
    assert resp.get_json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("depth", [65, 5000, 100000])
def test_deep_nesting_is_400_not_500(client, depth):
    raw = b'{"a":' * depth + b"1" + b"}" * depth
    resp = client.post("/cds-services/order-sign-crd", data=raw, content_type="application/json")
    assert resp.status_code == 400
    assert "nesting" in resp.get_json()["issue"][0]["diagnostics"]


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, {"c": "\\"]]]"}]}') == 3
    assert json_depth(b"[]") == 1 and json_depth(b"1") == 0


def test_json_formatter_emits_fields():
    record = logging.LogRecord("cds_service.decisions", logging.INFO, __file__, 1, "decision", None, None)
    record.hookInstance = "abc"
    record.determination = "SUPPORTED"
    out = json.loads(JsonFormatter().format(record))
    assert out["hookInstance"] == "abc" and out["determination"] == "SUPPORTED" and out["level"] == "INFO"


def _identifiers(body: dict) -> set[str]:
    """Patient names, identifiers and birth dates, and patient-data resource ids, in a request."""
    found: set[str] = set()
    ctx = body.get("context") or {}
    if isinstance(ctx.get("patientId"), str):
        found.add(ctx["patientId"])
    for value in (body.get("prefetch") or {}).values():
        resources = [value] if isinstance(value, dict) and value.get("resourceType") != "Bundle" else [
            e.get("resource") for e in (value or {}).get("entry") or [] if isinstance(e, dict)]
        for res in resources:
            if not isinstance(res, dict):
                continue
            if res.get("resourceType") == "Patient":
                found.add(res.get("birthDate") or "")
                for name in res.get("name") or []:
                    found.update([name.get("family") or ""] + list(name.get("given") or []))
                for ident in res.get("identifier") or []:
                    found.add(ident.get("value") or "")
            if res.get("resourceType") in ("Patient", "Observation", "Condition", "QuestionnaireResponse", "Encounter"):
                found.add(res.get("id") or "")
    return {f for f in found if f and len(f) > 3}


def test_logs_of_every_example_carry_no_patient_identifier(client, example_index, caplog):
    caplog.set_level(logging.DEBUG)
    identifiers: set[str] = set()
    for scenario in example_index:
        body = load_json(EXAMPLES / scenario["file"])
        identifiers |= _identifiers(body)
        client.post("/cds-services/order-sign-crd", json=body)
    assert len(identifiers) > 50
    text = caplog.text + "".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    leaked = sorted(i for i in identifiers if i in text)
    assert leaked == []


def test_brackets_inside_strings_do_not_make_a_shallow_body_too_deep():
    from cds_service.hardening import too_deep

    shallow = json.dumps({"a": "[" * 200, "b": ["{" * 100]}).encode()
    assert not too_deep(shallow, 64)
    assert too_deep(b'{"a":' * 70 + b"1" + b"}" * 70, 64)


def _nested(rng, depth):
    if depth == 0 or rng.random() < 0.2:
        return rng.choice([1, "a[{", "}]\\\"[", None])
    if rng.random() < 0.5:
        return [_nested(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": _nested(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_fast_depth_check_agrees_with_the_exact_count():
    """too_deep's C-speed pass (innermost pairs removed per pass) decides as the exact count does,
    brackets in strings and unbalanced text included."""
    import random

    from cds_service.hardening import too_deep

    rng = random.Random(8)
    samples = [json.dumps(_nested(rng, rng.randint(0, 12))).encode() for _ in range(1500)]
    samples += [b"[[[", b"]]][[[", b'{"a": "[[[[[["}', b"[" * 70 + b"]" * 69, b""]
    for raw in samples:
        depth = json_depth(raw)
        for limit in range(0, 14):
            assert too_deep(raw, limit) == (depth > limit), (raw[:80], limit, depth)
