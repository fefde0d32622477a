"""POST /cds-services/{id}/feedback (CDS Hooks 2.0): validation, storage, link to the decision;
overrideReasons on the cards a prescriber may override."""
from __future__ import annotations

import pytest

from cds_service.sansio.cards import OVERRIDE_REASON_SYSTEM
from conformance import card_errors
from decisions_support import (
    INSUFFICIENT, NOT_NECESSARY, SUPPORTED, database_url, feedback_entry, hook_request, make_app,
)

HOOK = "/cds-services/order-sign-crd"
FEEDBACK = "/cds-services/order-sign-crd/feedback"
_ = database_url  # fixture


@pytest.fixture
def sqlite_app(tmp_path):
    return make_app(f"sqlite:///{tmp_path / 'd.sqlite3'}", tmp_path)


def test_feedback_is_stored_and_linked_to_the_decision_that_issued_the_card(database_url, tmp_path):
    app = make_app(database_url, tmp_path)
    client = app.test_client()
    card = client.post(HOOK, json=hook_request(NOT_NECESSARY)).get_json()["cards"][0]
    resp = client.post(FEEDBACK, json={"feedback": [
        feedback_entry(card["uuid"], "overridden", "clinical-judgment", "2025-12-31T15:02:00Z"),
    ]})
    assert resp.status_code == 200
    recorder = app.extensions["cds_decisions"]
    assert recorder.flush(30)
    listing = client.get("/api/decisions").get_json()
    (decision,) = listing["items"]
    assert decision["cardUuid"] == card["uuid"] and decision["feedbackCount"] == 1
    full = client.get(f"/api/decisions/{decision['id']}").get_json()
    (fb,) = full["feedback"]
    assert fb["decisionId"] == decision["id"] and fb["outcome"] == "overridden"
    assert fb["overrideReason"] == {"system": OVERRIDE_REASON_SYSTEM, "code": "clinical-judgment", "display": "x"}
    assert fb["outcomeTimestamp"] == "2025-12-31T15:02:00Z" and fb["hasComment"] is True
    # The prescriber's free-text comment is not kept (it may name the patient).
    from test_decisions import dump

    assert "Jane Roe" not in dump(recorder.store)


def test_several_entries_and_accepted_suggestions(sqlite_app):
    client = sqlite_app.test_client()
    cards = [client.post(HOOK, json=hook_request(name)).get_json()["cards"][0]["uuid"] for name in (SUPPORTED, INSUFFICIENT)]
    body = {"feedback": [
        {**feedback_entry(cards[0], "accepted"), "acceptedSuggestions": [{"id": "6a3f7b1e-0000-4000-8000-000000000001"}]},
        feedback_entry(cards[1], "overridden", "documentation-elsewhere"),
    ]}
    assert client.post(FEEDBACK, json=body).status_code == 200
    assert sqlite_app.extensions["cds_decisions"].flush(30)
    items = client.get("/api/feedback").get_json()["items"]
    by_card = {i["card"]: i for i in items}
    assert by_card[cards[0]]["acceptedSuggestions"] == [{"id": "6a3f7b1e-0000-4000-8000-000000000001"}]
    assert by_card[cards[1]]["overrideReason"]["code"] == "documentation-elsewhere"
    assert all(i["decisionId"] is not None for i in items)


def test_unknown_card_is_accepted_and_recorded_as_unknown(sqlite_app):
    client = sqlite_app.test_client()
    unknown = "00000000-1111-4222-8333-444444444444"
    assert client.post(FEEDBACK, json={"feedback": [feedback_entry(unknown, "accepted")]}).status_code == 200
    assert sqlite_app.extensions["cds_decisions"].flush(30)
    (item,) = client.get("/api/feedback", query_string={"card": unknown}).get_json()["items"]
    assert item["decisionId"] is None and item["card"] == unknown
    stats = client.get("/api/stats").get_json()
    assert stats["feedback"]["unknownCards"] == 1 and stats["feedback"]["byOutcome"] == {"accepted": 1}


def test_feedback_for_an_unknown_service_is_404(sqlite_app):
    resp = sqlite_app.test_client().post("/cds-services/nope/feedback", json={"feedback": []})
    assert resp.status_code == 404 and resp.get_json()["resourceType"] == "OperationOutcome"


GOOD = {"card": "6a3f7b1e-0000-4000-8000-000000000009", "outcome": "accepted", "outcomeTimestamp": "2025-12-31T15:00:00Z"}


@pytest.mark.parametrize("body, expression", [
    ([], "feedback"),
    ({}, "feedback"),
    ({"feedback": []}, "feedback"),
    ({"feedback": "x"}, "feedback"),
    ({"feedback": ["x"]}, "feedback[0]"),
    ({"feedback": [{**GOOD, "card": ""}]}, "feedback[0].card"),
    ({"feedback": [{k: v for k, v in GOOD.items() if k != "card"}]}, "feedback[0].card"),
    ({"feedback": [{**GOOD, "outcome": "ignored"}]}, "feedback[0].outcome"),
    ({"feedback": [{k: v for k, v in GOOD.items() if k != "outcomeTimestamp"}]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [{**GOOD, "outcomeTimestamp": "2025-12-31"}]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [{**GOOD, "outcomeTimestamp": "yesterday at noon"}]}, "feedback[0].outcomeTimestamp"),
    ({"feedback": [{**GOOD, "acceptedSuggestions": {"id": "a"}}]}, "feedback[0].acceptedSuggestions"),
    ({"feedback": [{**GOOD, "acceptedSuggestions": [{}]}]}, "feedback[0].acceptedSuggestions[0].id"),
    ({"feedback": [{**GOOD, "overrideReason": {"userComment": "no"}}]}, "feedback[0].overrideReason"),
    ({"feedback": [{**GOOD, "outcome": "overridden", "acceptedSuggestions": [{"id": "a"}]}]},
     "feedback[0].acceptedSuggestions"),
    ({"feedback": [{**GOOD, "outcome": "overridden", "overrideReason": {"reason": {"system": "s"}}}]},
     "feedback[0].overrideReason.reason"),
    ({"feedback": [{**GOOD, "outcome": "overridden", "overrideReason": {"userComment": 5}}]},
     "feedback[0].overrideReason.userComment"),
    ({"feedback": [GOOD, {**GOOD, "outcome": None}]}, "feedback[1].outcome"),
])
def test_bad_feedback_is_a_400_operation_outcome_naming_the_element(sqlite_app, body, expression):
    resp = sqlite_app.test_client().post(FEEDBACK, json=body)
    assert resp.status_code == 400
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert expression in [e for issue in outcome["issue"] for e in issue.get("expression", [])]
    assert sqlite_app.extensions["cds_decisions"].pending == 0  # nothing of a bad request is kept


def test_feedback_that_is_not_json_is_a_400(sqlite_app):
    resp = sqlite_app.test_client().post(FEEDBACK, data=b"{nope", content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["issue"][0]["code"] == "structure"


def test_every_problem_is_reported(sqlite_app):
    body = {"feedback": [{"outcome": "maybe"}]}
    issues = sqlite_app.test_client().post(FEEDBACK, json=body).get_json()["issue"]
    assert {i["expression"][0] for i in issues} == {"feedback[0].card", "feedback[0].outcome",
                                                     "feedback[0].outcomeTimestamp"}


# -- overrideReasons on cards -----------------------------------------------------------------------

@pytest.mark.parametrize("name, offered", [(NOT_NECESSARY, True), (INSUFFICIENT, True), (SUPPORTED, False)])
def test_override_reasons_are_offered_where_the_prescriber_may_proceed(client, name, offered):
    card = client.post(HOOK, json=hook_request(name)).get_json()["cards"][0]
    assert ("overrideReasons" in card) is offered
    assert card_errors(card, "2.0.1") == []
    if offered:
        assert card["indicator"] == "warning"
        reasons = card["overrideReasons"]
        assert {r["code"] for r in reasons} >= {"clinical-judgment", "patient-informed"}
        assert all(r["system"] == OVERRIDE_REASON_SYSTEM and r["display"] for r in reasons)


def test_the_authenticated_client_and_tenant_are_recorded(sqlite_app):
    from flask import g

    from cds_service.auth import TrustedClient

    @sqlite_app.before_request
    def signed_in():  # what auth.init_app sets for a verified client token
        g.cds_client = TrustedClient(iss="https://ehr.example.org", tenant="tenant-9")

    client = sqlite_app.test_client()
    card = client.post(HOOK, json=hook_request(SUPPORTED)).get_json()["cards"][0]["uuid"]
    assert client.post(FEEDBACK, json={"feedback": [feedback_entry(card)]}).status_code == 200
    assert sqlite_app.extensions["cds_decisions"].flush(30)
    (decision,) = client.get("/api/decisions", query_string={"tenant": "tenant-9"}).get_json()["items"]
    assert decision["client"] == "https://ehr.example.org"
    (fb,) = client.get("/api/feedback").get_json()["items"]
    assert (fb["client"], fb["tenant"]) == ("https://ehr.example.org", "tenant-9")
