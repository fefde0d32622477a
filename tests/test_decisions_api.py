"""The JSON API over decision records: filters, one decision with its trace, aggregate counts."""
from __future__ import annotations

import pytest

from decisions_support import (
    INSUFFICIENT, NOT_NECESSARY, SUPPORTED, clock_at, database_url, feedback_entry, hook_request, make_app,
)

HOOK = "/cds-services/order-sign-crd"
_ = database_url  # fixture


@pytest.fixture
def seeded(database_url, tmp_path):
    """Six decisions over three days (two each: SUPPORTED, NOT_MEDICALLY_NECESSARY, INSUFFICIENT…)."""
    apps = {}
    plan = [((2025, 12, 29, 10), SUPPORTED), ((2025, 12, 29, 23, 30), NOT_NECESSARY), ((2025, 12, 30, 9), INSUFFICIENT),
            ((2025, 12, 30, 12), SUPPORTED), ((2025, 12, 31, 8), NOT_NECESSARY), ((2025, 12, 31, 9), SUPPORTED)]
    cards = []
    for when, name in plan:
        app = make_app(database_url, tmp_path, clock=clock_at(*when))
        card = app.test_client().post(HOOK, json=hook_request(name)).get_json()["cards"][0]["uuid"]
        cards.append(card)
        app.extensions["cds_decisions"].close()
        apps[when] = app
    app = make_app(database_url, tmp_path)
    client = app.test_client()
    client.post(HOOK + "/feedback", json={"feedback": [feedback_entry(cards[1], "overridden", "clinical-judgment"),
                                                        feedback_entry(cards[0], "accepted")]})
    assert app.extensions["cds_decisions"].flush(30)
    return client, cards


def test_list_is_newest_first_with_filters(seeded):
    client, cards = seeded
    everything = client.get("/api/decisions").get_json()
    assert everything["total"] == 6 and [d["cardUuid"] for d in everything["items"]] == cards[::-1]
    first = everything["items"][-1]
    assert first["receivedAt"] == "2025-12-29T10:00:00Z" and first["policy"] == "CP.MP.190"
    assert first["payer"] == "centene" and first["revision"] == "CP.MP.190-2023" and first["feedbackCount"] == 1

    def ids(**query):
        return [d["cardUuid"] for d in client.get("/api/decisions", query_string=query).get_json()["items"]]

    assert ids(determination="SUPPORTED") == [cards[5], cards[3], cards[0]]
    assert ids(determination=["SUPPORTED", "INSUFFICIENT_DOCUMENTATION"]) == [cards[5], cards[3], cards[2], cards[0]]
    assert ids(payer="centene", policy="CP.MP.190") == cards[::-1]
    assert ids(payer="someone-else") == [] and ids(policy="CP.MP.999") == []
    assert ids(**{"from": "2025-12-30", "to": "2025-12-30"}) == [cards[3], cards[2]]  # a whole day
    assert ids(**{"from": "2025-12-29T23:00:00Z", "to": "2025-12-30T10:00:00Z"}) == [cards[2], cards[1]]
    assert ids(**{"from": "2025-12-30T00:30:00+01:00"}) == cards[1:][::-1]  # = 2025-12-29T23:30Z, inclusive
    assert ids(limit=2, offset=1) == [cards[4], cards[3]]


def test_one_decision_with_its_trace_call_and_feedback(seeded):
    client, cards = seeded
    (summary,) = client.get("/api/decisions", query_string={"cardUuid": cards[1]}).get_json()["items"]
    d = client.get(f"/api/decisions/{summary['id']}").get_json()
    assert d["determination"] == "NOT_MEDICALLY_NECESSARY" and d["code"] == "E1392"
    assert d["deciding"] and d["criteria"] and all({"id", "value", "evidence"} == set(c) for c in d["criteria"])
    assert d["advisories"] == ["LESSER_COST"] and d["t0"]
    assert d["call"]["status"] == 200 and d["call"]["hook"] == "order-sign" and d["call"]["orders"] == 1
    (fb,) = d["feedback"]
    assert fb["outcome"] == "overridden" and fb["overrideReason"]["code"] == "clinical-judgment"
    assert client.get("/api/decisions/999999").status_code == 404


def test_stats_aggregate_counts(seeded):
    client, _cards = seeded
    stats = client.get("/api/stats").get_json()
    assert stats["calls"] == {"total": 6, "byStatus": {"200": 6}}
    assert stats["decisions"]["byDetermination"] == {
        "SUPPORTED": 3, "NOT_MEDICALLY_NECESSARY": 2, "INSUFFICIENT_DOCUMENTATION": 1}
    assert stats["decisions"]["byPayer"] == {"centene": 6} and stats["decisions"]["byPolicy"] == {"CP.MP.190": 6}
    assert stats["feedback"] == {"total": 2, "byOutcome": {"accepted": 1, "overridden": 1},
                                 "overrideReasons": {"clinical-judgment": 1}, "unknownCards": 0}
    assert stats["recorder"]["pending"] == 0 and stats["recorder"]["dropped"] == 0
    day = client.get("/api/stats", query_string={"from": "2025-12-31", "to": "2025-12-31"}).get_json()
    assert day["decisions"]["byDetermination"] == {"SUPPORTED": 1, "NOT_MEDICALLY_NECESSARY": 1}
    assert day["calls"]["total"] == 2


@pytest.mark.parametrize("query, param", [({"from": "last week"}, "from"), ({"to": "2025-13-01"}, "to"),
                                           ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
                                           ({"offset": "-1"}, "offset")])
def test_bad_query_is_a_400_operation_outcome(tmp_path, query, param):
    client = make_app(f"sqlite:///{tmp_path / 'd.sqlite3'}", tmp_path).test_client()
    resp = client.get("/api/decisions", query_string=query)
    assert resp.status_code == 400 and resp.get_json()["issue"][0]["expression"] == [param]
