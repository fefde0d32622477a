"""The web console (/console) through Flask's test client: every route, its login, CSRF, privacy
of list pages, the decision page's tree and card against real evaluations, try-it, the dashboard."""
from __future__ import annotations

import copy
import html
import json
import re
from datetime import date

import pytest
import sqlalchemy as sa
from markupsafe import escape

from cds_service import create_app
from cds_service.console import queries, render_markdown, trees
from cds_service.decisions.models import decisions as decisions_table
from cds_service.decisions.recorder import shown_text
from conftest import EXAMPLES, FIXED_NOW, load_json
from decisions_support import clock_at, database_url, feedback_entry, hook_request, make_app

_ = database_url  # fixture
TOKEN = "console-test-token-0123456789abcdef"
HOOK = "/cds-services/order-sign-crd"
SUPPORTED = "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"
NOT_NECESSARY = "cp-mp-190-2023/03-adult-sleep-only-portable-e1392.json"
INSUFFICIENT = "cp-mp-190-2023/12-adult-stable-state-unattested-e1390.json"
NOT_APPLICABLE = "cp-mp-190-2023/23-oximeter-e0445-not-applicable.json"
INDEX = [
    {**entry, "file": f"{folder.name}/{entry['file']}"}
    for folder in sorted(p for p in EXAMPLES.iterdir() if (p / "index.json").exists())
    for entry in load_json(folder / "index.json")
]


def console_app(**config):
    base = {"TESTING": True, "CLOCK": lambda: FIXED_NOW, "DATABASE_URL": "sqlite://", "CONSOLE_TOKEN": TOKEN,
            "SECRET_KEY": "test-secret"}
    return create_app({**base, **config})


def csrf(client, url="/console/login") -> str:
    page = client.get(url).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def login(client, token=TOKEN, next_url=None):
    data = {"csrf_token": csrf(client), "token": token}
    if next_url:
        data["next"] = next_url
    return client.post("/console/login", data=data)


def patient_identifiers(body: dict) -> set[str]:
    """Names, birth dates, identifier values, phone numbers and address lines of the request's patients."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if node.get("resourceType") == "Patient":
                found.add(node.get("birthDate") or "")
                for name in node.get("name") or []:
                    found.update([name.get("family") or "", *(name.get("given") or [])])
                for ident in node.get("identifier") or []:
                    found.add(ident.get("value") or "")
                for tel in node.get("telecom") or []:
                    found.add(tel.get("value") or "")
                for addr in node.get("address") or []:
                    found.update(addr.get("line") or [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(body)
    return {f for f in found if f and len(f) >= 3}


@pytest.fixture(scope="module")
def seeded():
    """Every fhir_examples scenario evaluated once; the console open (tests are development mode)."""
    app = console_app(CONSOLE_OPEN=True)
    client = app.test_client()
    cards, requests = {}, {}
    for entry in INDEX:
        body = hook_request(entry["file"])
        requests[entry["file"]] = body
        resp = client.post(HOOK, json=body)
        assert resp.status_code == 200, entry["file"]
        cards[entry["file"]] = resp.get_json()["cards"]
    recorder = app.extensions["cds_decisions"]
    assert recorder.flush(30)
    yield app, client, cards, requests
    recorder.close()


def decision_id(app, card_uuid: str) -> int:
    (item,) = app.extensions["cds_decisions"].store.list_decisions({"cardUuid": [card_uuid]})[1]
    return item["id"]


# -- access ---------------------------------------------------------------------------------------------
CONSOLE_PAGES = ["/console/", "/console/policies", "/console/policies/CP.MP.190-2023", "/console/decisions",
                 "/console/decisions/1", "/console/try",
                 "/console/try/scenario?id=cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"]


@pytest.mark.parametrize("url", CONSOLE_PAGES)
def test_every_page_asks_for_the_login_first(url):
    client = console_app().test_client()
    resp = client.get(url)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/console/login?next=")


def test_posts_need_the_csrf_token_and_a_login():
    client = console_app().test_client()
    assert client.post("/console/try", data={"action": "scenario"}).status_code == 400
    token = csrf(client)
    assert client.post("/console/try", data={"action": "scenario", "csrf_token": token}).status_code == 401
    assert client.post("/console/login", data={"token": TOKEN}).status_code == 400  # no CSRF token


def test_login_with_the_admin_token_sets_a_signed_session_cookie_and_logout_ends_it():
    app = console_app()
    client = app.test_client()
    assert client.post(HOOK, json=hook_request(SUPPORTED)).status_code == 200  # decision 1
    assert app.extensions["cds_decisions"].flush(10)
    bad = login(client, token="wrong")
    assert bad.status_code == 401 and "That token is not valid." in bad.get_data(as_text=True)
    ok = login(client, next_url="/console/decisions")
    assert ok.status_code == 302 and ok.headers["Location"] == "/console/decisions"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert TOKEN not in cookie
    for url in CONSOLE_PAGES:
        assert client.get(url).status_code == 200, url
    out = client.post("/console/logout", data={"csrf_token": csrf(client, "/console/")})
    assert out.status_code == 302
    assert client.get("/console/").status_code == 302


def test_next_never_leaves_the_console():
    client = console_app().test_client()
    for target in ("https://evil.example/", "//evil.example/console", "/api/decisions", "/console\\@evil"):
        resp = login(client, next_url=target)
        assert resp.headers["Location"] == "/console/", target


def test_a_changed_token_or_an_expired_session_ends_the_login():
    app = console_app()
    client = app.test_client()
    login(client)
    assert client.get("/console/").status_code == 200
    app.config["CONSOLE_TOKEN"] = "another-token-0123456789"
    assert client.get("/console/").status_code == 302
    app.config["CONSOLE_TOKEN"] = TOKEN
    assert client.get("/console/").status_code == 200
    app.config["CONSOLE_SESSION_HOURS"] = 0
    assert client.get("/console/").status_code == 302


def test_without_a_configured_token_nobody_gets_in():
    client = console_app(CONSOLE_TOKEN=None).test_client()
    page = client.get("/console/login")
    assert page.status_code == 503 and "CONSOLE_TOKEN" in page.get_data(as_text=True)
    assert client.get("/console/").status_code == 302
    assert client.post("/console/login", data={"token": ""}).status_code == 503


def test_open_mode_only_in_development():
    production = console_app(TESTING=False, CONSOLE_OPEN=True).test_client()
    assert production.get("/console/").status_code == 302
    development = console_app(TESTING=False, CONSOLE_OPEN=True, DEVELOPMENT=True, CONSOLE_TOKEN=None).test_client()
    page = development.get("/console/")
    assert page.status_code == 200 and "open without login" in page.get_data(as_text=True)


def test_failed_logins_are_throttled():
    client = console_app().test_client()
    statuses = [login(client, token=f"guess-{i}").status_code for i in range(12)]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    assert login(client).status_code == 429  # even the right token, until the minute has passed


def test_console_responses_carry_a_strict_content_security_policy():
    client = console_app(CONSOLE_OPEN=True).test_client()
    resp = client.get("/console/policies")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
    page = resp.get_data(as_text=True)
    assert "<script>" not in page and " style=" not in page  # nothing inline for the CSP to refuse
    assert client.get("/console/static/console.js").status_code == 200
    assert client.get("/console/static/console.css").status_code == 200


def test_console_can_be_switched_off():
    client = console_app(CONSOLE_ENABLED=False).test_client()
    assert client.get("/console/").status_code == 404


# -- policies ---------------------------------------------------------------------------------------------
def test_policies_page_lists_payers_policies_and_revisions_with_effective_dates():
    app = console_app(CONSOLE_OPEN=True)
    page = app.test_client().get("/console/policies").get_data(as_text=True)
    library = app.extensions["cds_library"]
    for payer in library.payers.values():
        assert html.escape(payer.name) in page
    for policy in library.policies:
        assert f'href="/console/policies/{policy.prefix}"' in page
        assert policy.effective_start.isoformat() in page
    assert "2022-12-31" in page  # CP.MP.190 rev 01/22 ends
    assert "in effect today" in page and "superseded" in page


@pytest.mark.parametrize("prefix", ["CP.MP.190-2022", "CP.MP.190-2023", "CP.MP.173-2024", "MC.CP.MP.31-2025", "MG-OXY-2024"])
def test_revision_page_shows_the_criteria_tree_value_sets_and_questionnaire(prefix):
    app = console_app(CONSOLE_OPEN=True)
    page = app.test_client().get(f"/console/policies/{prefix}").get_data(as_text=True)
    policy = app.extensions["cds_library"].by_prefix(prefix)
    for node in policy.all_nodes():
        assert f'data-id="{node.id}"' in page, node.id
        assert str(escape(node.text))[:60] in page
    for op in {n.op for n in policy.all_nodes() if n.op}:
        assert f'class="op op--{op}"' in page
    for link in policy.items:
        assert trees.short_id(link, prefix) in page
    assert page.count('<details class="valueset"') >= 1
    assert f'/fhir/Questionnaire/{prefix}' in page


def test_revision_page_shows_thresholds():
    page = console_app(CONSOLE_OPEN=True).test_client().get("/console/policies/CP.MP.190-2023").get_data(as_text=True)
    block = page[page.index('data-id="CP.MP.190-2023/I.B.1.a"'):]
    block = block[:block.index("</li>")]
    assert re.search(r'class="threshold"><dt>sat_max</dt><dd>88</dd>', block)
    assert re.search(r'class="threshold"><dt>pao2_max</dt><dd>55</dd>', block)
    assert "REST" in block
    assert 'id="vs-O2-INDICATION"' in page and "J44*" in page


def test_unknown_revision_is_a_404_page():
    resp = console_app(CONSOLE_OPEN=True).test_client().get("/console/policies/NOPE-1999")
    assert resp.status_code == 404 and "No policy revision NOPE-1999" in resp.get_data(as_text=True)


# -- decisions ---------------------------------------------------------------------------------------------
def test_list_pages_show_no_patient_names_and_no_identifiers(seeded):
    app, client, cards, requests = seeded
    secrets_ = set().union(*(patient_identifiers(b) for b in requests.values()))
    assert len(secrets_) > 100
    identifiers = {b["hookInstance"] for b in requests.values()}
    identifiers |= {c["uuid"] for cs in cards.values() for c in cs}
    identifiers |= {c["extension"]["davinci-crd.associated-resource"][0]["reference"] for cs in cards.values() for c in cs}
    pages = [client.get(f"/console/decisions?page={n}").get_data(as_text=True) for n in (1, 2, 3)]
    pages += [client.get("/console/").get_data(as_text=True), client.get("/console/policies").get_data(as_text=True)]
    pages += [client.get("/console/decisions?determination=NOT_MEDICALLY_NECESSARY").get_data(as_text=True)]
    text = "\n".join(pages)
    assert sum(len(re.findall(r'<tr data-determination=', p)) for p in pages[:3]) == sum(len(c) for c in cards.values())
    assert [s for s in secrets_ if s in text] == []
    assert [i for i in identifiers if i in text] == []


def test_identifiers_appear_on_the_decisions_own_page_but_no_names(seeded):
    app, client, cards, requests = seeded
    card = cards[SUPPORTED][0]
    page = client.get(f"/console/decisions/{decision_id(app, card['uuid'])}").get_data(as_text=True)
    order = card["extension"]["davinci-crd.associated-resource"][0]["reference"]
    assert order in page and card["uuid"] in page and requests[SUPPORTED]["hookInstance"] in page
    patient = requests[SUPPORTED]["prefetch"]["patient"]
    assert patient["name"][0]["family"] not in page and patient["birthDate"] not in page
    assert "born [date withheld]" in page


def test_decision_list_filters(seeded):
    app, client, cards, _ = seeded

    def rows(**query):
        page = client.get("/console/decisions", query_string=query).get_data(as_text=True)
        return re.findall(r'<tr data-determination="([A-Z_]+)">', page), page

    found, page = rows(determination="NOT_MEDICALLY_NECESSARY")
    expected = sum(1 for cs in cards.values() for c in cs
                   if c["extension"]["cds-coverage.evaluation"]["determination"] == "NOT_MEDICALLY_NECESSARY")
    assert found == ["NOT_MEDICALLY_NECESSARY"] * expected and f"{expected} decisions match" in page
    found, page = rows(payer="masshealth", policy="MG-OXY")
    assert found and "MG-OXY-2024" in page and "CP.MP.190-2023" not in page.split("decision-table")[1]
    assert rows(**{"from": "2025-12-31", "to": "2025-12-31"})[0] and not rows(**{"to": "2025-12-30"})[0]
    assert client.get("/console/decisions?from=yesterday").status_code == 400


@pytest.mark.parametrize("name,determination", [
    (SUPPORTED, "SUPPORTED"), (NOT_NECESSARY, "NOT_MEDICALLY_NECESSARY"), (INSUFFICIENT, "INSUFFICIENT_DOCUMENTATION"),
])
def test_decision_page_draws_the_evaluated_tree_with_each_nodes_state(seeded, name, determination):
    app, client, cards, _ = seeded
    (card,) = cards[name]
    ev = card["extension"]["cds-coverage.evaluation"]
    assert ev["determination"] == determination
    page = client.get(f"/console/decisions/{decision_id(app, card['uuid'])}").get_data(as_text=True)
    drawn = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r'<a href="#[^"]+" class="tree-node" data-id="([^"]+)" data-state="([a-z-]+)" data-deciding="(yes|no)"', page)}
    state = {"TRUE": "met", "FALSE": "not-met", "UNKNOWN": "unknown"}
    assert len(drawn) == len(ev["criteria"]) + 1  # and the root
    for c in ev["criteria"]:
        assert drawn[c["id"]][0] == state[c["value"]], c["id"]
        assert drawn[c["id"]][1] == ("yes" if c["id"] in ev["deciding"] else "no"), c["id"]
    # Colours: each node's box is filled with its state's colour.
    for node_id, (st, _) in drawn.items():
        fill = trees.STATE_COLOURS[st][0]
        assert re.search(rf'data-id="{re.escape(node_id)}"[^>]*>\s*<title>[^<]*</title>\s*<rect class="node-box"[^>]*fill="{fill}"', page), node_id
    assert {"SUPPORTED": "met", "NOT_MEDICALLY_NECESSARY": "not-met",
            "INSUFFICIENT_DOCUMENTATION": "unknown"}[determination] == drawn[ev["revision"]][0]


def test_decision_page_puts_the_evidence_beside_its_node(seeded):
    app, client, cards, _ = seeded
    page = client.get(f"/console/decisions/{decision_id(app, cards[SUPPORTED][0]['uuid'])}").get_data(as_text=True)
    lines = re.findall(r'<text x="\d+" y="\d+" class="ev ev--evidence" data-for="CP.MP.190-2023/I.B.1.a">([^<]+)</text>', page)
    assert lines and re.search(r"SpO2 88 % at rest, room air, 20\d\d-\d\d-\d\d", html.unescape(lines[0]))
    assert "Observation/" in lines[0]
    page = client.get(f"/console/decisions/{decision_id(app, cards[INSUFFICIENT][0]['uuid'])}").get_data(as_text=True)
    assert 'class="ev ev--resolution"' in page and "Questionnaire item" in html.unescape(page)


def test_the_card_on_a_decision_page_is_the_card_the_ehr_got_for_every_example(seeded):
    app, client, cards, _ = seeded
    library = app.extensions["cds_library"]
    store = app.extensions["cds_decisions"].store
    checked = 0
    for name, returned in cards.items():
        for card in returned:
            d = store.get_decision(decision_id(app, card["uuid"]))
            again = trees.card_of(d, library, "http://localhost/fhir/Questionnaire", app.config["CODE_SYSTEM_BASE"])
            for key in ("uuid", "summary", "indicator", "detail", "source", "links", "overrideReasons"):
                assert again.get(key) == card.get(key), (name, key)
            checked += 1
    assert checked == sum(len(c) for c in cards.values()) > 100
    (card,) = cards[INSUFFICIENT]
    page = client.get(f"/console/decisions/{decision_id(app, card['uuid'])}").get_data(as_text=True)
    assert html.escape(card["summary"]) in page and 'data-indicator="warning"' in page
    assert "Attestation questionnaire for this policy" in page and "<li><code>CP.MP.190-2023/I.D.2</code> — UNKNOWN" in page


def test_every_decision_page_renders(seeded):
    app, client, cards, _ = seeded
    total = sum(len(c) for c in cards.values())
    for i in range(1, total + 1):
        resp = client.get(f"/console/decisions/{i}")
        assert resp.status_code == 200, i
    assert client.get(f"/console/decisions/{total + 1}").status_code == 404
    assert client.get(f"/console/decisions/{2**70}").status_code == 404


def test_decision_page_shows_feedback():
    app = console_app(CONSOLE_OPEN=True)
    client = app.test_client()
    card = client.post(HOOK, json=hook_request(NOT_NECESSARY)).get_json()["cards"][0]
    resp = client.post(HOOK + "/feedback", json={"feedback": [feedback_entry(card["uuid"], "overridden", "clinical-judgment")]})
    assert resp.status_code == 200
    assert app.extensions["cds_decisions"].flush(10)
    page = client.get(f"/console/decisions/{decision_id(app, card['uuid'])}").get_data(as_text=True)
    assert 'id="feedback-table"' in page and "overridden" in page and "clinical-judgment" in page
    assert "Jane Roe" not in page  # the prescriber's comment is never stored


# -- the store behind it -------------------------------------------------------------------------------------
def test_the_store_keeps_what_the_card_showed_without_names_or_birth_dates(seeded):
    app, _client, _cards, requests = seeded
    with app.extensions["cds_decisions"].store.engine.connect() as conn:
        stored = json.dumps([r for (r,) in conn.execute(sa.select(decisions_table.c.criteria))], ensure_ascii=False)
    assert "SpO2 88 % at rest" in stored and "born [date withheld]" in stored
    secrets_ = set().union(*(patient_identifiers(b) for b in requests.values()))
    assert [s for s in secrets_ if s in stored] == []


def test_the_json_api_leaves_what_the_card_showed_out(seeded):
    app, client, cards, _ = seeded
    d = client.get(f"/api/decisions/{decision_id(app, cards[INSUFFICIENT][0]['uuid'])}").get_json()
    assert d["criteria"] and all(set(c) == {"id", "value", "evidence"} for c in d["criteria"])


def test_shown_text_is_one_bounded_line_with_birth_dates_withheld():
    assert shown_text("Patient/p1 born 1956-07-19: age ≥ 65 on 2025-04-09") == \
        "Patient/p1 born [date withheld]: age ≥ 65 on 2025-04-09"
    assert shown_text("a\nb\x00c") == "a b c"
    assert len(shown_text("x" * 5000)) == 600
    assert shown_text(None) is None and shown_text(17) is None and shown_text("  ") is None
    assert shown_text("allergy: nickel \ud800") == "allergy: nickel \\ud800" and shown_text("≥ 65") == "≥ 65"


# -- try it ---------------------------------------------------------------------------------------------
def test_try_page_offers_every_scenario():
    page = console_app(CONSOLE_OPEN=True).test_client().get("/console/try").get_data(as_text=True)
    options = re.findall(r'<option value="([^"]+\.json)"', page)
    assert sorted(options) == sorted(e["file"] for e in INDEX)
    assert '<label for="scenario">' in page and '<label for="request-json">' in page


@pytest.mark.parametrize("name,determination,indicator", [
    (SUPPORTED, "SUPPORTED", "info"), (NOT_NECESSARY, "NOT_MEDICALLY_NECESSARY", "warning"),
    (INSUFFICIENT, "INSUFFICIENT_DOCUMENTATION", "warning"), (NOT_APPLICABLE, "NOT_APPLICABLE", "info"),
])
def test_try_a_scenario_of_each_determination(name, determination, indicator):
    app = console_app(CONSOLE_OPEN=True)
    client = app.test_client()
    resp = client.post("/console/try", data={"csrf_token": csrf(client, "/console/try"), "action": "scenario", "scenario": name})
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert "HTTP <strong>200</strong>" in page
    assert re.search(rf'<article class="cds-card cds-card--{indicator}" data-indicator="{indicator}"', page)
    assert re.search(rf'<h3 class="cds-card__summary" id="card-[^"]+">{determination}: ', page)
    assert '<div class="cds-card__detail"><p><strong>' in page  # markdown rendered
    raw = json.loads(html.unescape(re.search(r'<pre id="raw-response" tabindex="0">(.*?)</pre>', page, re.S).group(1)))
    sent = json.loads(html.unescape(re.search(r'<pre id="raw-request" tabindex="0">(.*?)</pre>', page, re.S).group(1)))
    assert raw["cards"][0]["extension"]["cds-coverage.evaluation"]["determination"] == determination
    assert sent["hookInstance"] != load_json(EXAMPLES / name)["hookInstance"]  # a fresh one per call
    link = re.search(r'href="/console/decisions/(\d+)" class="decision-link"', page)
    assert link
    d = app.extensions["cds_decisions"].store.get_decision(int(link.group(1)))
    assert d["client"] == "console" and d["determination"] == determination and d["hookInstance"] == sent["hookInstance"]
    dashboard = client.get("/console/?source=console").get_data(as_text=True)
    assert '<span class="tile__n" id="tile-decisions">1</span>' in dashboard
    if determination == "INSUFFICIENT_DOCUMENTATION":
        assert "Attestation questionnaire for this policy" in page
    if determination in ("NOT_MEDICALLY_NECESSARY", "INSUFFICIENT_DOCUMENTATION"):
        assert "Override reason" in page
    if determination != "NOT_APPLICABLE":
        assert 'id="coverage-info"' in page


def test_try_works_while_client_authentication_is_required_on_the_wire():
    app = console_app(AUTH_REQUIRED=True)
    client = app.test_client()
    assert client.post(HOOK, json=load_json(EXAMPLES / SUPPORTED)).status_code == 401
    login(client)
    resp = client.post("/console/try", data={"csrf_token": csrf(client, "/console/try"), "action": "scenario",
                                             "scenario": SUPPORTED})
    assert resp.status_code == 200 and "SUPPORTED: E1390" in resp.get_data(as_text=True)


def test_try_a_pasted_request_as_it_is_and_refusals_shown():
    client = console_app(CONSOLE_OPEN=True).test_client()
    token = csrf(client, "/console/try")
    body = load_json(EXAMPLES / NOT_NECESSARY)
    page = client.post("/console/try", data={"csrf_token": token, "action": "paste", "request": json.dumps(body)}).get_data(as_text=True)
    assert "NOT_MEDICALLY_NECESSARY: E1392" in page and body["hookInstance"] in page
    bad = copy.deepcopy(body)
    bad["prefetch"]["coverage"]["entry"][0]["resource"]["payor"][0]["identifier"]["value"] = "nobody"
    page = client.post("/console/try", data={"csrf_token": token, "action": "paste", "request": json.dumps(bad)}).get_data(as_text=True)
    assert "HTTP <strong>400</strong>" in page and 'id="try-outcome"' in page and "Coverage.payor" in page
    resp = client.post("/console/try", data={"csrf_token": token, "action": "paste", "request": "{not json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.get_data(as_text=True)
    resp = client.post("/console/try", data={"csrf_token": token, "action": "paste", "request": "[" * 100 + "]" * 100})
    assert resp.status_code == 400 and "nesting" in resp.get_data(as_text=True)
    page = client.post("/console/try", data={"csrf_token": token, "action": "paste",
                                             "request": json.dumps({**body, "hook": "patient-view"})}).get_data(as_text=True)
    assert "no CDS service for hook" in page
    resp = client.post("/console/try", data={"csrf_token": token, "action": "scenario", "scenario": "../pyproject.toml"})
    assert resp.status_code == 400


def test_scenario_json_only_for_listed_scenarios():
    client = console_app(CONSOLE_OPEN=True).test_client()
    assert client.get(f"/console/try/scenario?id={SUPPORTED}").get_json() == load_json(EXAMPLES / SUPPORTED)
    for bad in ("../pyproject.toml", "cp-mp-190-2023/index.json", "/etc/passwd", ""):
        assert client.get("/console/try/scenario", query_string={"id": bad}).status_code == 404


def test_card_markdown_is_rendered_without_raw_html():
    out = str(render_markdown("**Policy** <script>alert(1)</script>\n\n- `I.A` — TRUE\n\n[x](javascript:alert(1))"))
    assert "<strong>Policy</strong>" in out and "<code>I.A</code>" in out and "<li>" in out
    assert "<script>" not in out and 'href="javascript' not in out


# -- dashboard --------------------------------------------------------------------------------------------------
def test_dashboard_draws_its_charts(seeded):
    app, client, cards, _ = seeded
    page = client.get("/console/").get_data(as_text=True)
    for section in ("chart-determinations", "chart-overrides", "chart-latency", "chart-fhir"):
        assert f'id="{section}"' in page
    assert page.count('data-chart="determinations"') == 5  # one per policy (4), one for orders no policy governs
    assert page.count('<rect class="bar"') >= 5 and '<circle class="point"' in page
    assert f'<span class="tile__n" id="tile-decisions">{sum(len(c) for c in cards.values())}</span>' in page
    assert re.search(r"<td>\d+\.\d ms</td>", page)  # latency percentiles
    narrowed = client.get("/console/?payer=masshealth").get_data(as_text=True)
    assert 'data-policy="MG-OXY"' in narrowed and 'data-policy="CP.MP.190"' not in narrowed
    assert client.get("/console/?source=console").get_data(as_text=True).count('id="tile-decisions">0<') == 1
    assert client.get("/console/?source=nobody").status_code == 400
    assert client.get("/console/?from=2025-12-31&to=2025-01-01").status_code == 400
    assert client.get("/console/?from=2020-01-01&to=2025-01-01").status_code == 400


def test_dashboard_series_on_both_stores(database_url, tmp_path):
    """Per-day determinations, override rate, latency percentiles and FHIR errors, in SQLite and PostgreSQL."""
    plan = [((2025, 12, 29, 10), SUPPORTED), ((2025, 12, 29, 23, 30), NOT_NECESSARY), ((2025, 12, 30, 9), INSUFFICIENT),
            ((2025, 12, 31, 8), NOT_NECESSARY), ((2025, 12, 31, 9), SUPPORTED)]
    cards = []
    for when, name in plan:
        app = make_app(database_url, tmp_path, clock=clock_at(*when))
        cards.append(app.test_client().post(HOOK, json=hook_request(name)).get_json()["cards"][0]["uuid"])
        app.extensions["cds_decisions"].close()
    app = make_app(database_url, tmp_path)
    app.test_client().post(HOOK + "/feedback", json={"feedback": [
        feedback_entry(cards[1], "overridden", "clinical-judgment"), feedback_entry(cards[0], "accepted"),
        feedback_entry(cards[3], "accepted")]})
    recorder = app.extensions["cds_decisions"]
    assert recorder.flush(30)
    data = queries.dashboard(recorder.store, date(2025, 12, 28), date(2025, 12, 31))
    assert data["days"] == ["2025-12-28", "2025-12-29", "2025-12-30", "2025-12-31"]
    assert data["determinations"] == {"CP.MP.190": {
        "SUPPORTED": [0, 1, 0, 1], "NOT_MEDICALLY_NECESSARY": [0, 1, 0, 1], "INSUFFICIENT_DOCUMENTATION": [0, 0, 1, 0]}}
    fb = data["feedback"]
    assert sum(fb["total"]) == 3 and sum(fb["overridden"]) == 1
    assert fb["byPolicy"] == {"CP.MP.190": {"total": 3, "overridden": 1}}
    lat = data["latency"]
    assert lat["days"]["count"] == [0, 2, 1, 2] and lat["overall"]["count"] == 5
    assert lat["days"]["p50"][0] is None and lat["days"]["p50"][2] > 0
    assert lat["overall"]["p50"] <= lat["overall"]["p90"] <= lat["overall"]["p99"]
    with recorder.store.engine.connect() as conn:
        from cds_service.decisions.models import hook_calls
        ms = sorted(conn.execute(sa.select(hook_calls.c.elapsed_ms)).scalars())
    assert lat["overall"]["p50"] == pytest.approx(queries.percentile(ms, 50))
    assert lat["overall"]["p99"] == pytest.approx(queries.percentile(ms, 99))
    assert sum(data["fhir"]["calls"]) == 5 and sum(data["fhir"]["errors"]) == 0
    assert queries.dashboard(recorder.store, date(2025, 12, 28), date(2025, 12, 31), source="ehr") == data
    assert queries.dashboard(recorder.store, date(2025, 12, 28), date(2025, 12, 31), source="console")["determinations"] == {}
    only = queries.dashboard(recorder.store, date(2025, 12, 28), date(2025, 12, 31), payer="masshealth")
    assert only["determinations"] == {} and only["latency"]["overall"]["count"] == 0
    recorder.close()


def test_percentile_interpolates_like_percentile_cont():
    assert queries.percentile([], 50) is None
    assert queries.percentile([10.0], 99) == 10.0
    assert queries.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert queries.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
