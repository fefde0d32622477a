"""GET /metrics (Prometheus text format): requests, latency, determinations, feedback, FHIR, queue."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cds_service import create_app
from conftest import FIXED_NOW
from decisions_support import INSUFFICIENT, NOT_NECESSARY, SUPPORTED, feedback_entry, hook_request

HOOK = "/cds-services/order-sign-crd"


def samples(client) -> dict:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_latency_determinations_and_feedback_are_counted(app, client):
    cards = {}
    for name in (SUPPORTED, SUPPORTED, NOT_NECESSARY, INSUFFICIENT):
        cards[name] = client.post(HOOK, json=hook_request(name)).get_json()["cards"][0]["uuid"]
    assert client.post(HOOK, json={"hook": "order-sign"}).status_code == 400
    assert client.post("/cds-services/nope", json={}).status_code == 404
    client.post(HOOK + "/feedback", json={"feedback": [
        feedback_entry(cards[NOT_NECESSARY], "overridden", "patient-informed"),
        feedback_entry(cards[SUPPORTED], "accepted"),
    ]})
    client.get("/cds-services")
    m = samples(client)
    assert value(m, "cds_requests_total", service="order-sign-crd", endpoint="hook", status="200") == 4
    assert value(m, "cds_requests_total", service="order-sign-crd", endpoint="hook", status="400") == 1
    assert value(m, "cds_requests_total", service="unknown", endpoint="hook", status="404") == 1
    assert value(m, "cds_requests_total", service="order-sign-crd", endpoint="feedback", status="200") == 1
    assert value(m, "cds_requests_total", service="-", endpoint="discovery", status="200") == 1
    assert value(m, "cds_request_seconds_count", service="order-sign-crd", endpoint="hook") == 5
    assert value(m, "cds_request_seconds_bucket", service="order-sign-crd", endpoint="hook", le="+Inf") == 5
    det = dict(service="order-sign-crd", payer="centene", policy="CP.MP.190")
    assert value(m, "cds_determinations_total", **det, determination="SUPPORTED") == 2
    assert value(m, "cds_determinations_total", **det, determination="NOT_MEDICALLY_NECESSARY") == 1
    assert value(m, "cds_determinations_total", **det, determination="INSUFFICIENT_DOCUMENTATION") == 1
    assert value(m, "cds_feedback_total", service="order-sign-crd", outcome="overridden") == 1
    assert value(m, "cds_feedback_total", service="order-sign-crd", outcome="accepted") == 1
    assert value(m, "cds_feedback_override_reasons_total", code="patient-informed") == 1
    assert app.extensions["cds_decisions"].flush(30)
    m = samples(client)
    assert value(m, "cds_decision_queue_pending") == 0 and value(m, "cds_decision_store_up") == 1
    # Requests refused before evaluation (schema 400, unknown service) are counted above, not recorded.
    # 4 evaluated calls plus the refused 400 and 404: every hook call is recorded
    assert value(m, "cds_decision_records_stored_total", kind="call") == 6
    assert value(m, "cds_decision_records_stored_total", kind="feedback") == 2
    assert value(m, "cds_decision_records_dropped_total") == 0


def test_fhir_query_counts_errors_and_time(app, client):
    app.extensions["cds_decisions"].record({
        "hookInstance": "h", "service": "order-sign-crd", "hook": "order-sign", "status": 200,
        "receivedAt": FIXED_NOW.isoformat(), "elapsedMs": 900.0, "fhirQueries": 4, "fhirErrors": 1,
        "fhirMs": 750.0, "traces": [],
    })
    # Counts per order only (no call totals) are summed.
    app.extensions["cds_decisions"].record({
        "hookInstance": "i", "service": "order-sign-crd", "hook": "order-sign", "status": 200,
        "receivedAt": FIXED_NOW.isoformat(), "traces": [
            {"order": "DeviceRequest/a", "determination": "TECHNICAL_FAILURE", "fhirQueries": ["q1", "q2"],
             "fhirErrors": ["e1"]},
            {"order": "DeviceRequest/b", "determination": "TECHNICAL_FAILURE", "fhirQueries": 1},
        ],
    })
    m = samples(client)
    assert value(m, "cds_fhir_queries_total", service="order-sign-crd") == 7
    assert value(m, "cds_fhir_query_errors_total", service="order-sign-crd") == 2
    assert value(m, "cds_fhir_query_seconds_total", service="order-sign-crd") == 0.75
    assert value(m, "cds_determinations_total", service="order-sign-crd", payer="-", policy="-",
                 determination="TECHNICAL_FAILURE") == 2


def test_each_app_has_its_own_registry():
    one, two = create_app({"TESTING": True}), create_app({"TESTING": True})
    one.test_client().get("/cds-services")
    assert value(samples(one.test_client()), "cds_requests_total", service="-", endpoint="discovery", status="200") == 1
    assert value(samples(two.test_client()), "cds_requests_total", service="-", endpoint="discovery", status="200") == 0


def test_metrics_carry_no_patient_data(client):
    body = hook_request(SUPPORTED)
    client.post(HOOK, json=body)
    text = client.get("/metrics").get_data(as_text=True)
    assert body["prefetch"]["patient"]["name"][0]["family"] not in text
    assert body["hookInstance"] not in text
