"""The web console in a real browser: Debian's Chromium driven by Playwright against the real app on a
real server (client authentication on; decisions made by signed EHR calls). Clicks through every page,
runs a try-it scenario of each determination and checks what is drawn: tree node states and colours,
card text, links and override reasons, charts. Screenshots go to test-artifacts/console/."""
from __future__ import annotations

import json
import re

import pytest

from browser import CONSOLE_TOKEN, chromium, console_context, console_site, page, shot  # noqa: F401 (fixtures)
from cds_service.console.trees import STATE_COLOURS
from test_console import patient_identifiers

STATE = {"TRUE": "met", "FALSE": "not-met", "UNKNOWN": "unknown"}
INDICATOR_RGB = {"info": "rgb(11, 92, 173)", "warning": "rgb(179, 92, 0)"}

CONTRAST_JS = """
(selectors) => {
  function rgb(text) {
    const m = text.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return p.length > 3 && p[3] === 0 ? null : p.slice(0, 3);
  }
  function hex(text) { const m = text.match(/^#([0-9a-f]{6})$/i); if (!m) return null;
    return [0, 2, 4].map(i => parseInt(m[1].slice(i, i + 2), 16)); }
  function lum(c) { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; }
  function ratio(a, b) { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); }
  function background(el) {
    for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor); if (c) return c; }
    return [255, 255, 255];
  }
  const out = [];
  for (const sel of selectors) for (const el of document.querySelectorAll(sel)) {
    if (!el.getClientRects().length) continue;
    out.push({sel, text: el.textContent.trim().slice(0, 40), ratio: ratio(rgb(getComputedStyle(el).color), background(el))});
  }
  for (const node of document.querySelectorAll('a.tree-node')) {
    const fill = hex(node.querySelector('rect').getAttribute('fill'));
    for (const t of node.querySelectorAll('text')) out.push({sel: 'tree text', text: t.textContent.trim(), ratio: ratio(hex(t.getAttribute('fill')), fill)});
  }
  return out;
}
"""

A11Y_JS = """
() => {
  const problems = [];
  if (document.documentElement.lang !== 'en') problems.push('html lang');
  if (document.querySelectorAll('h1').length !== 1) problems.push('h1 count ' + document.querySelectorAll('h1').length);
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden') continue;
    if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) problems.push('unlabelled ' + (el.id || el.name));
  }
  for (const svg of document.querySelectorAll('svg[role=img], svg[role=group]')) {
    const ids = (svg.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean);
    if (!ids.length || ids.some(id => !document.getElementById(id) || !document.getElementById(id).textContent.trim())) problems.push('svg without a name');
  }
  for (const a of document.querySelectorAll('a')) {
    if (!(a.textContent.trim() || a.getAttribute('aria-label'))) problems.push('link without text ' + a.getAttribute('href'));
  }
  return problems;
}
"""


def decision_id(site, name: str) -> int:
    (item,) = site.app.extensions["cds_decisions"].store.list_decisions({"cardUuid": [site.cards[name]["uuid"]]})[1]
    return item["id"]


def assert_clean(pg):
    assert pg.problems == [], pg.problems


def assert_accessible(pg):
    """Labels, names, one h1, a language; text contrast ≥ 4.5:1 (WCAG AA), tree labels on their fills too."""
    assert pg.evaluate(A11Y_JS) == [], pg.url
    low = [r for r in pg.evaluate(CONTRAST_JS, [".det", ".cds-card__indicator", ".pill", ".top nav a", ".button",
                                                  ".muted", ".op", "th", "td", "label", "code", "p"])
           if r["ratio"] < 4.5]
    assert low == [], (pg.url, low[:5])


# -- login ---------------------------------------------------------------------------------------------------
def test_login_refuses_a_wrong_token_then_lets_the_admin_in(chromium, console_site):
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    try:
        pg.goto(console_site.url("/console/decisions"))
        assert "/console/login" in pg.url
        assert pg.get_by_role("heading", level=1).inner_text() == "Log in to the console"
        pg.get_by_label("Admin token").fill("not-the-token")
        pg.get_by_role("button", name="Log in").click()
        alert = pg.get_by_role("alert")
        assert alert.inner_text() == "That token is not valid."
        assert pg.get_by_label("Admin token").get_attribute("aria-invalid") == "true"
        assert_accessible(pg)
        shot(pg, "01-login-refused")
        pg.get_by_label("Admin token").fill(CONSOLE_TOKEN)
        pg.keyboard.press("Enter")
        pg.wait_for_url("**/console/decisions")
        assert pg.get_by_role("heading", level=1).inner_text() == "Decisions"
        pg.get_by_role("button", name="Log out").click()
        pg.wait_for_url("**/console/login")
        pg.goto(console_site.url("/console/"))
        assert "/console/login" in pg.url
    finally:
        context.close()


# -- dashboard ----------------------------------------------------------------------------------------------
def test_dashboard_draws_determinations_overrides_latency_and_fhir_errors(page, console_site):
    pg = page
    pg.goto(console_site.url("/console/"))
    assert pg.get_by_role("heading", level=1).inner_text() == "Dashboard"
    for name in ("Determinations over time, by policy", "Override rate (from card feedback)",
                 "Latency percentiles (answered hook calls)", "FHIR query errors"):
        assert pg.get_by_role("heading", name=name).is_visible()
    policies = pg.locator('figure[data-chart="determinations"]').evaluate_all("els => els.map(e => e.dataset.policy)")
    assert {"CP.MP.190", "CP.MP.173", "MC.CP.MP.31", "MG-OXY"} <= set(policies)
    oxygen = pg.locator('figure[data-policy="CP.MP.190"] rect.bar')
    assert oxygen.count() >= 5
    days = set(oxygen.evaluate_all("els => els.map(e => e.dataset.day)"))
    assert {"2025-12-20", "2025-12-22", "2025-12-26", "2025-12-29", "2025-12-31"} <= days
    box = pg.locator('figure[data-policy="CP.MP.190"] svg').bounding_box()
    assert box["width"] > 400 and box["height"] > 120
    override = pg.locator('figure[data-chart="override-policy"] rect.bar[data-series="CP.MP.190"]')
    assert float(override.get_attribute("data-value")) == pytest.approx(200 / 3, abs=0.1)  # 2 of 3 overridden
    assert pg.locator('figure[data-chart="override-days"] circle.point').count() >= 1
    points = pg.locator('figure[data-chart="latency"] circle.point')
    assert points.count() >= 15  # p50, p90, p99 on each of the 5 days
    assert re.fullmatch(r"\d+\.\d ms", pg.locator("#latency-overall td").first.inner_text())
    assert pg.locator('figure[data-chart="fhir"] svg').is_visible()
    assert int(pg.locator("#tile-decisions").inner_text()) >= 9
    assert_accessible(pg)
    shot(pg, "02-dashboard")
    pg.get_by_label("From (UTC date)").fill("2025-12-25")
    pg.get_by_role("button", name="Show").click()
    pg.wait_for_url("**from=2025-12-25**")
    oxygen = pg.locator('figure[data-policy="CP.MP.190"] rect.bar')
    assert set(oxygen.evaluate_all("els => els.map(e => e.dataset.day)")) >= {"2025-12-26", "2025-12-29", "2025-12-31"}
    assert "2025-12-20" not in set(oxygen.evaluate_all("els => els.map(e => e.dataset.day)"))
    assert_clean(pg)


# -- policies -------------------------------------------------------------------------------------------------
def test_policies_click_through_every_revision(page, console_site):
    pg = page
    pg.goto(console_site.url("/console/"))
    library = console_site.app.extensions["cds_library"]
    pg.get_by_role("navigation", name="Console").get_by_role("link", name="Policies").click()
    pg.wait_for_url("**/console/policies")
    assert pg.get_by_role("heading", name=re.compile("Centene-affiliated health plan")).is_visible()
    assert_accessible(pg)
    shot(pg, "03-policies")
    for policy in library.policies:
        pg.get_by_role("link", name=policy.display, exact=True).click()
        pg.wait_for_url(f"**/console/policies/{policy.prefix}")
        assert policy.display in pg.get_by_role("heading", level=1).inner_text()
        assert pg.locator("li.crit").count() == len(policy.outline())
        assert pg.locator("#questionnaire tbody tr").count() == len(policy.items)
        if policy.prefix == "CP.MP.190-2023":
            node = pg.locator('li.crit[data-id="CP.MP.190-2023/I.B.1.a"]')
            thresholds = node.locator(":scope > dl .threshold").all_inner_texts()
            assert any("sat_max" in t and "88" in t for t in thresholds) and any("pao2_max" in t and "55" in t for t in thresholds)
            assert "taken at rest (awake)" in node.locator(":scope > .crit__text").inner_text()
            assert pg.locator('li.crit[data-id="CP.MP.190-2023/I.B"] > .crit__head .op').inner_text() == "ANY"
            vs = pg.locator("#vs-O2-INDICATION")
            assert not vs.locator("table").is_visible()
            vs.locator("summary").click()
            assert vs.locator("table").is_visible() and "J44*" in vs.locator("table").inner_text()
            vs.locator("summary").click()  # closed again; the criterion's link to its value set opens it
            assert not vs.locator("table").is_visible()
            pg.locator('li.crit[data-id="CP.MP.190-2023/I.A"] a[href="#vs-O2-INDICATION"]').click()
            pg.wait_for_function("() => document.getElementById('vs-O2-INDICATION').open")
            assert pg.evaluate("document.activeElement.tagName") == "SUMMARY"
            assert_accessible(pg)
            shot(pg, "04-revision-CP.MP.190-2023")
        pg.locator(".crumbs").get_by_role("link", name="Policies").click()
        pg.wait_for_url("**/console/policies")
    assert_clean(pg)


# -- try it and the decision page --------------------------------------------------------------------------
CASES = [
    ("cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json", "SUPPORTED", "info"),
    ("cp-mp-190-2023/03-adult-sleep-only-portable-e1392.json", "NOT_MEDICALLY_NECESSARY", "warning"),
    ("cp-mp-190-2023/12-adult-stable-state-unattested-e1390.json", "INSUFFICIENT_DOCUMENTATION", "warning"),
    ("cp-mp-190-2023/23-oximeter-e0445-not-applicable.json", "NOT_APPLICABLE", "info"),
]


@pytest.mark.parametrize("scenario,determination,indicator", CASES, ids=[c[1] for c in CASES])
def test_try_a_scenario_then_see_its_tree(page, console_site, scenario, determination, indicator):
    pg = page
    pg.goto(console_site.url("/console/try"))
    assert pg.get_by_role("navigation", name="Console").get_by_role("link", name="Try it").get_attribute("aria-current") == "page"
    pg.get_by_label("Scenario (fhir_examples), with the determination it documents").select_option(scenario)
    pg.get_by_role("button", name="Send scenario").click()
    pg.wait_for_selector("#try-result")
    assert "HTTP 200" in pg.locator("#try-status").inner_text()
    response = json.loads(pg.locator("#raw-response").inner_text())
    request = json.loads(pg.locator("#raw-request").inner_text())
    assert request["context"]["patientId"] and request["prefetch"]
    (card,) = response["cards"]
    ev = card["extension"]["cds-coverage.evaluation"]
    assert ev["determination"] == determination

    shown = pg.locator(".cds-card").first
    assert shown.get_attribute("data-indicator") == indicator
    assert shown.evaluate("e => getComputedStyle(e).borderLeftColor") == INDICATOR_RGB[indicator]
    assert shown.locator(".cds-card__indicator").inner_text().lower() == indicator
    assert shown.locator(".cds-card__summary").inner_text() == card["summary"]
    assert shown.locator(".cds-card__summary").inner_text().startswith(determination + ":")
    detail = shown.locator(".cds-card__detail")
    assert detail.locator("p strong").first.inner_text() in card["detail"]  # markdown rendered, not shown raw
    assert "**" not in detail.inner_text()
    codes = detail.locator("li code").all_inner_texts()
    assert set(ev["deciding"]) <= set(codes)  # one line per deciding criterion, its ID as code
    assert card["source"]["label"] in shown.locator(".cds-card__source").inner_text()
    if card["source"].get("url"):
        assert shown.locator(".cds-card__source a").get_attribute("href") == card["source"]["url"]
    if determination in ("NOT_MEDICALLY_NECESSARY", "INSUFFICIENT_DOCUMENTATION"):
        reasons = shown.get_by_label("Override reason").locator("option").all_inner_texts()
        assert len(reasons) == 1 + len(card["overrideReasons"])
    if determination == "INSUFFICIENT_DOCUMENTATION":
        link = shown.get_by_role("link", name=re.compile("Attestation questionnaire for this policy"))
        assert link.get_attribute("href").endswith("/fhir/Questionnaire/CP.MP.190-2023")
    if determination != "NOT_APPLICABLE":
        assert pg.locator("#coverage-info tbody tr").count() == len(response["systemActions"])
    if determination == "INSUFFICIENT_DOCUMENTATION":
        assert_accessible(pg)
    shot(pg, f"05-try-{determination.lower()}")

    pg.get_by_role("link", name=re.compile(r"Open decision #\d+")).click()
    pg.wait_for_url(re.compile(r".*/console/decisions/\d+$"))
    assert determination.replace("_", " ") in pg.get_by_role("heading", level=1).inner_text()
    if determination == "NOT_APPLICABLE":
        assert "No criterion was evaluated" in pg.locator("main").inner_text()
    else:
        tree = pg.locator("svg#criteria-tree")
        assert tree.is_visible()
        nodes = tree.locator("a.tree-node")
        assert nodes.count() == len(ev["criteria"]) + 1
        drawn = {d["id"]: d for d in nodes.evaluate_all("""els => els.map(e => ({id: e.dataset.id, state: e.dataset.state,
            deciding: e.dataset.deciding, fill: e.querySelector('rect').getAttribute('fill'),
            box: e.querySelector('rect').getBoundingClientRect().width}))""")}
        for c in ev["criteria"]:
            node = drawn[c["id"]]
            assert node["state"] == STATE[c["value"]], c["id"]
            assert node["fill"] == STATE_COLOURS[node["state"]][0], c["id"]
            assert node["deciding"] == ("yes" if c["id"] in ev["deciding"] else "no"), c["id"]
            assert node["box"] > 100
        root = drawn[ev["revision"]]
        assert root["state"] == {"SUPPORTED": "met", "NOT_MEDICALLY_NECESSARY": "not-met",
                                 "INSUFFICIENT_DOCUMENTATION": "unknown"}[determination]
        # The evidence beside the nodes: value, unit, date and resource, as the card said.
        if determination == "SUPPORTED":
            text = tree.locator('text.ev[data-for="CP.MP.190-2023/I.B.1.a"]').first.text_content()
            assert re.search(r"Observation/\S+ SpO2 88 % at rest, room air, \d{4}-\d\d-\d\d", text)
        if determination == "NOT_MEDICALLY_NECESSARY":
            assert drawn["CP.MP.190-2023/I.F.2"]["state"] == "not-met" and drawn["CP.MP.190-2023/I.F.2"]["deciding"] == "yes"
        if determination == "INSUFFICIENT_DOCUMENTATION":
            assert "Questionnaire item" in " ".join(tree.locator("text.ev--resolution").all_text_contents())
        assert pg.locator(".criteria-table tbody tr").count() == nodes.count()
    assert pg.locator(".cds-card__summary").inner_text() == card["summary"]  # the card as the EHR showed it
    assert_accessible(pg)
    shot(pg, f"06-decision-{determination.lower()}")
    assert_clean(pg)


def test_try_a_pasted_request_loaded_into_the_editor(page, console_site):
    pg = page
    pg.goto(console_site.url("/console/try"))
    pg.get_by_label("Scenario (fhir_examples), with the determination it documents").select_option(
        "mg-oxy-2024/03-adult-spo2-89-no-evidence-e1390.json")
    pg.get_by_role("button", name="Copy into the editor below").click()
    editor = pg.get_by_label("Hook request (JSON: hook, hookInstance, context, prefetch)")
    pg.wait_for_function("() => document.getElementById('request-json').value.length > 100")
    body = json.loads(editor.input_value())
    assert body["hook"] == "order-sign"
    pg.get_by_role("button", name="Send pasted request").click()
    pg.wait_for_selector("#try-result")
    assert pg.locator(".cds-card__summary").inner_text().startswith("NOT_MEDICALLY_NECESSARY: E1390")
    assert json.loads(pg.locator("#raw-request").inner_text())["hookInstance"] == body["hookInstance"]
    body["prefetch"]["coverage"]["entry"][0]["resource"]["payor"][0]["identifier"]["value"] = "nobody"
    editor.fill(json.dumps(body))
    pg.get_by_role("button", name="Send pasted request").click()
    pg.wait_for_selector("#try-outcome")
    assert "HTTP 400" in pg.locator("#try-status").inner_text()
    assert "Coverage.payor" in pg.locator("#try-outcome").inner_text()
    editor.fill("{ not json")
    pg.get_by_role("button", name="Send pasted request").click()
    assert "not valid JSON" in pg.get_by_role("alert").inner_text()
    shot(pg, "07-try-pasted-refused")
    problems = [p for p in pg.problems if "400 (BAD REQUEST)" not in p]  # the page itself answers 400 here
    assert problems == []


# -- decisions --------------------------------------------------------------------------------------------------
def test_decisions_filter_show_no_names_and_open_a_decision(page, console_site):
    pg = page
    pg.goto(console_site.url("/console/"))
    pg.get_by_role("navigation", name="Console").get_by_role("link", name="Decisions").click()
    pg.wait_for_url("**/console/decisions")
    store = console_site.app.extensions["cds_decisions"].store
    total, _ = store.list_decisions({})
    assert pg.locator("#decision-table tbody tr").count() == min(total, 50)
    text = pg.locator("main").inner_text()
    secrets = set().union(*(patient_identifiers(b) for b in console_site.requests.values()))
    identifiers = {b["hookInstance"] for b in console_site.requests.values()}
    identifiers |= {c["extension"]["davinci-crd.associated-resource"][0]["reference"] for c in console_site.cards.values()}
    content = pg.content()
    assert [s for s in secrets if s in content] == [] and [i for i in identifiers if i in content] == []
    assert_accessible(pg)
    shot(pg, "08-decisions")

    pg.get_by_label("Determination").select_option("NOT_MEDICALLY_NECESSARY")
    pg.get_by_label("Payer").select_option("centene")
    pg.get_by_role("button", name="Apply filters").click()
    pg.wait_for_url("**determination=NOT_MEDICALLY_NECESSARY**")
    expected, _ = store.list_decisions({"determination": ["NOT_MEDICALLY_NECESSARY"], "payer": ["centene"]})
    rows = pg.locator("#decision-table tbody tr")
    assert rows.count() == expected >= 3
    assert set(rows.evaluate_all("els => els.map(e => e.dataset.determination)")) == {"NOT_MEDICALLY_NECESSARY"}
    assert pg.get_by_label("Determination").input_value() == "NOT_MEDICALLY_NECESSARY"
    assert "decisions match the filters" in pg.locator("#decision-count").inner_text()
    assert "CP.MP.190" in text or "CP.MP.190" in pg.locator("main").inner_text()
    rows.first.get_by_role("link", name=re.compile(r"^Decision \d+$")).click()
    pg.wait_for_url(re.compile(r".*/console/decisions/\d+$"))
    order = pg.locator(".facts").inner_text()
    assert re.search(r"(DeviceRequest|ServiceRequest|MedicationRequest|Procedure)/\S+", order)  # identifiers: here only
    assert_clean(pg)


def test_decision_page_shows_the_feedback_on_its_card(page, console_site):
    pg = page
    name = "cp-mp-190-2023/03-adult-sleep-only-portable-e1392.json"
    pg.goto(console_site.url(f"/console/decisions/{decision_id(console_site, name)}"))
    rows = pg.locator("#feedback-table tbody tr")
    assert rows.count() == 1
    assert "overridden" in rows.inner_text() and "clinical-judgment" in rows.inner_text()
    shot(pg, "09-decision-with-feedback")
    assert_clean(pg)


def test_keyboard_reaches_content_and_tree_nodes(page, console_site):
    pg = page
    name = "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"
    pg.goto(console_site.url(f"/console/decisions/{decision_id(console_site, name)}"))
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
    pg.keyboard.press("Enter")
    assert pg.evaluate("document.activeElement.id") == "main"
    node = pg.locator('a.tree-node[data-id="CP.MP.190-2023/I.B.1.a"]')
    node.focus()
    assert pg.evaluate("document.activeElement.dataset.id") == "CP.MP.190-2023/I.B.1.a"
    outline = node.locator("rect").evaluate("e => getComputedStyle(e).strokeWidth")
    assert float(outline.rstrip("px")) >= 4  # the focused node is marked
    pg.keyboard.press("Enter")
    pg.wait_for_function("() => document.activeElement && document.activeElement.tagName === 'TR'")
    assert pg.evaluate("document.activeElement.id") == "node-I.B.1.a"
    assert pg.evaluate("location.hash") == "#node-I.B.1.a"
