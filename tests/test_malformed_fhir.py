"""Malformed FHIR, in the prefetch and in the answers of a FHIR server the service queries: never a 500.

Two ways in, each with thousands of variants generated from valid requests (a rich CP.MP.190
request from ``builders``, an order-select form of it, and one example per other policy):

* **prefetch**, through the Flask client: every value of the prefetch and the draft orders
  replaced by a value of the wrong type, deleted, or given unknown siblings (a seeded sample),
  then targeted families — every FHIR date precision and time zone (and impossible dates) in
  every date element, units the service does not know, huge strings, deep nesting, non-UTF-8
  and odd encodings, keys holding the wrong resource types or no Bundle at all.
* **FHIR server answers**: the same request without prefetch, ``fhirServer`` a real HTTP server
  on 127.0.0.1 (on ``FHIR_ALLOWLIST``) that serves the request's resources — mutated as above, or
  wrapped in broken Bundles, broken HTTP (resets, short bodies, bad encodings, odd statuses,
  nesting deep enough to exhaust the parser, answers over the size limit).

Every answer: HTTP < 500 and valid JSON (no NaN); 200 carries one card per evaluated order, each
with a summary, an indicator and a detail that explains (a technical failure names the data
that could not be retrieved); 4xx is an OperationOutcome with a diagnostic. The number of requests
tried is printed at the end of the module (``malformed FHIR: N requests tried, 0 5xx``).
``MALFORMED_SAMPLE`` (default 150) sets the random mutations per request template (a third of it for
the FHIR server's resources); ``MALFORMED_SAMPLE=100000`` tries every single-point mutation
(about 32,000 requests, 7 minutes; bench/RESULTS.md, Fuzzing).
"""
from __future__ import annotations

import codecs
import copy
import gzip
import json
import os
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

import builders as b
from cds_service import create_app
from cds_service.sansio.orders import draft_orders
from conftest import EXAMPLES, FIXED_NOW, load_json
from fhir_server import _Server, request_resources

SAMPLE = int(os.environ.get("MALFORMED_SAMPLE", "150"))
TRIED: Counter = Counter()  # requests tried, by family
FIVE_XX: Counter = Counter()
NET: Counter = Counter()  # answered by the edge's second pass (data the evaluation could not read)
UNREADABLE = "the patient's FHIR data could not be read"
DETERMINATIONS = {"SUPPORTED", "NOT_MEDICALLY_NECESSARY", "INSUFFICIENT_DOCUMENTATION", "NOT_APPLICABLE",
                  "TECHNICAL_FAILURE"}
TOKEN = "malformed-token-3b7e"


# -- the report -----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    total = sum(TRIED.values())
    line = (f"malformed FHIR: {total} requests tried, {sum(FIVE_XX.values())} 5xx, "
            f"{sum(NET.values())} answered as unreadable data "
            f"({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))})")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:  # pragma: no cover
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


# -- request templates ------------------------------------------------------------------------------
def rich_request() -> dict:
    """CP.MP.190 with every kind of data: tests in three contexts, oximetry summary, PaO2 in kPa,
    hematocrit, conditions, encounters with a service provider, a procedure, a prior order, attestations."""
    org = b.organization("org-lab", "291U00000X")
    return b.request(
        observations=[
            b.spo2(88, b.before(3), "REST", "room", id="obs-rest"),
            b.spo2(86, b.before(10), "EXERCISE", "room", id="obs-ex"),
            b.spo2(93, b.before(10), "EXERCISE", "on", id="obs-ex-on", at="09:20"),
            b.oximetry(84, b.before(30), {"minutes-spo2-le-88": 7.5}, id="obs-night"),
            b.pao2(7.2, b.before(40), "kPa", id="obs-pao2", encounter="Encounter/enc-hosp", performer="Organization/org-lab"),
            b.hematocrit(57, b.before(60), id="obs-hct"),
        ],
        conditions=[b.condition("J44.9", id="cond-copd"), b.condition("I50.9", onset="2019-03", id="cond-hf")],
        encounters=[b.encounter("enc-hosp", "IMP", b.before(45), b.before(40), service_provider="Organization/org-lab")],
        organizations=[org],
        procedures=[b.procedure("proc-1", "94762", b.before(30))],
        prior_request=b.device_request("dr-prior", authored="2024-06-01"),
        questionnaire_answers={"I.E": True, "I.D.2": True},
        hook_instance=str(uuid.uuid4()),
    )


def select_request() -> dict:
    body = rich_request()
    body["hook"] = "order-select"
    body["context"]["selections"] = [f"DeviceRequest/{b.ORDER_ID}"]
    return body


def example_request(folder: str) -> dict:
    entry = load_json(EXAMPLES / folder / "index.json")[0]
    return load_json(EXAMPLES / folder / entry["file"])


TEMPLATES: dict[str, Callable[[], dict]] = {
    "cp-mp-190-rich": rich_request,
    "order-select": select_request,
    "cp-mp-173": lambda: example_request("cp-mp-173-2024"),
    "mc-cp-mp-31": lambda: example_request("mc-cp-mp-31-2025"),
    "mg-oxy": lambda: example_request("mg-oxy-2024"),
    "cp-mp-190-2022": lambda: example_request("cp-mp-190-2022"),
}


def service_of(body: dict) -> str:
    return "order-select-crd" if body.get("hook") == "order-select" else "order-sign-crd"


# -- checking an answer -----------------------------------------------------------------------------
def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def problems(resp, body: dict | None) -> list[str]:
    """What is wrong with an answer (empty: acceptable)."""
    status = resp.status_code
    if status >= 500:
        return [f"HTTP {status}: {resp.get_data(as_text=True)[:300]}"]
    try:
        payload = json.loads(resp.get_data(), parse_constant=_no_constants)
    except ValueError as exc:
        return [f"HTTP {status} answer is not valid JSON ({exc}): {resp.get_data()[:200]!r}"]
    if status == 200:
        out = []
        cards = payload.get("cards")
        if not isinstance(cards, list):
            return ["200 without a cards list"]
        expected = _orders(body)
        if body is not None and body.get("hook") == "order-sign" and expected is not None and len(cards) != expected:
            out.append(f"{len(cards)} cards for {expected} draft orders")
        for card in cards:
            ev = (card.get("extension") or {}).get("cds-coverage.evaluation") or {}
            if not (isinstance(card.get("summary"), str) and card["summary"].strip() and len(card["summary"]) < 140):
                out.append(f"card without a usable summary: {card.get('summary')!r}")
            if card.get("indicator") not in ("info", "warning", "critical"):
                out.append(f"card indicator {card.get('indicator')!r}")
            if not (isinstance(card.get("detail"), str) and card["detail"].strip()):
                out.append(f"card {card.get('summary')!r} explains nothing (no detail)")
            if ev.get("determination") not in DETERMINATIONS:
                out.append(f"card determination {ev.get('determination')!r}")
            if ev.get("determination") == "TECHNICAL_FAILURE" and "could not be" not in card.get("detail", ""):
                out.append(f"technical-failure card does not say what could not be retrieved: {card.get('detail')!r}")
            if ev.get("determination") == "INSUFFICIENT_DOCUMENTATION" and "UNKNOWN" not in card.get("detail", ""):
                out.append("insufficient-documentation card names no open criterion")
        return out
    if 400 <= status < 500:
        issues = payload.get("issue") if isinstance(payload, dict) else None
        if not (isinstance(payload, dict) and payload.get("resourceType") == "OperationOutcome" and issues
                and isinstance(issues[0].get("diagnostics"), str) and issues[0]["diagnostics"].strip()):
            return [f"HTTP {status} without an explaining OperationOutcome: {payload!r:.300}"]
        return []
    return [f"unexpected HTTP {status}"]


def _orders(body: dict | None) -> int | None:
    try:
        return len(draft_orders(body["context"]["draftOrders"], FIXED_NOW.date()))
    except Exception:  # noqa: BLE001 - a mutated context: the service decides
        return None


class Runner:
    """Posts bodies (or raw bytes), counts them, collects every problem."""

    def __init__(self, app, family: str):
        self.client = app.test_client()
        self.family = family
        self.failures: list[str] = []
        self.statuses: Counter = Counter()

    def post(self, body: dict | None, label: str, raw: bytes | None = None, service: str | None = None,
             content_type: str = "application/json"):
        service = service or service_of(body or {})
        if raw is None:
            raw = json.dumps(body).encode()
        resp = self.client.post(f"/cds-services/{service}", data=raw, content_type=content_type)
        TRIED[self.family] += 1
        self.statuses[resp.status_code] += 1
        if resp.status_code >= 500:
            FIVE_XX[self.family] += 1
        if UNREADABLE.encode() in resp.get_data():
            NET[self.family] += 1
        for p in problems(resp, body):
            self.failures.append(f"{label}: {p}")
        return resp

    def check(self) -> None:
        assert not self.failures, f"{len(self.failures)} bad answers, e.g.:\n" + "\n".join(self.failures[:15])


@pytest.fixture(scope="module")
def app():
    return create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW})


# -- mutations ----------------------------------------------------------------------------------
Path = tuple


def walk(obj, prefix: Path = ()) -> Iterator[Path]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from walk(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from walk(v, prefix + (i,))


def get(obj, path: Path):
    for p in path:
        obj = obj[p]
    return obj


def put(obj, path: Path, value) -> None:
    get(obj, path[:-1])[path[-1]] = value


def delete(obj, path: Path) -> None:
    parent = get(obj, path[:-1])
    del parent[path[-1]]


UNKNOWN = {"unknownElement": {"x": [1, {"y": None}], "z": "?"}, "_status": {"extension": [{"url": "urn:x"}]},
           "modifierExtension": [{"url": "http://example.org/unknown-modifier", "valueString": "x"}]}


def wrong_types(value) -> list:
    if isinstance(value, bool):
        return ["true", 1, None, [], {}]
    if isinstance(value, (int, float)):
        return [str(value), None, True, [], {"value": value}, -1, 0, 1e308, -1e308, 10 ** 30]
    if isinstance(value, str):
        return [42, 3.5, True, None, [], {}, [value], {"value": value}, "", "\u0000\ud800\U0001F600" + value]
    if isinstance(value, dict):
        return [None, "x", 1, [], [value], {}]
    if isinstance(value, list):
        return [None, "x", 1, {}, [None], [1, "x", []], [], value[:1] * 50]
    return ["x", 1, {}]


def mutations(body: dict, roots: list[Path]) -> list[tuple[str, Callable[[dict], None]]]:
    """Every single-point mutation of the values under ``roots`` (wrong type, deleted, unknown siblings)."""
    out: list[tuple[str, Callable[[dict], None]]] = []
    for root in roots:
        try:
            base = get(body, root)
        except (KeyError, IndexError, TypeError):
            continue
        for rel in walk(base):
            path = root + rel
            value = get(body, path)
            where = ".".join(map(str, path))
            out.append((f"delete {where}", lambda d, p=path: delete(d, p)))
            for i, wrong in enumerate(wrong_types(value)):
                out.append((f"{where} = {json.dumps(wrong)[:40]}", lambda d, p=path, w=wrong: put(d, p, copy.deepcopy(w))))
            if isinstance(value, dict):
                out.append((f"unknown elements in {where}", lambda d, p=path: get(d, p).update(copy.deepcopy(UNKNOWN))))
    return out


def resource_roots(body: dict) -> list[Path]:
    roots: list[Path] = [("context", "draftOrders")]
    for key, value in (body.get("prefetch") or {}).items():
        roots.append(("prefetch", key))
    return roots


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_random_wrong_types_missing_and_unknown_elements_in_prefetch(app, template):
    base = TEMPLATES[template]()
    runner = Runner(app, "prefetch-mutations")
    assert not problems(runner.post(base, "unmutated"), base)
    rng = random.Random(f"malformed-{template}")
    candidates = mutations(base, resource_roots(base))
    for label, mutate in rng.sample(candidates, min(SAMPLE, len(candidates))):
        body = copy.deepcopy(base)
        body["hookInstance"] = str(uuid.uuid4())
        mutate(body)
        runner.post(body, f"{template}: {label}")
    runner.check()


def test_malformed_encounter_class_is_ignored_not_fatal(app):
    """Encounter.class.code an object: the encounter cannot settle the test's setting; the order is still evaluated."""
    body = rich_request()
    body["prefetch"]["encounters"]["entry"][1]["resource"]["class"]["code"] = {"code": "IMP"}
    resp = Runner(app, "safety-net").post(body, "Encounter.class.code an object")
    assert resp.status_code == 200
    (card,) = resp.get_json()["cards"]
    assert b.evaluation(resp.get_json())["determination"] != "TECHNICAL_FAILURE"


def test_data_the_evaluation_cannot_read_is_a_technical_failure_card_not_a_500(app, caplog, monkeypatch):
    """A predicate that fails on data it does not expect: the edge answers with a technical-failure
    card saying the data could not be read, and logs the incident (not the data)."""
    from cds_service.sansio import engine

    real = engine.PREDICATES["indication_only"]  # the first route condition: always evaluated

    def fragile(ctx, node, params):
        raise TypeError("unhashable type: 'dict'")

    monkeypatch.setitem(engine.PREDICATES, "indication_only", fragile)
    body = rich_request()
    resp = Runner(app, "safety-net").post(body, "a predicate raising TypeError")
    assert resp.status_code == 200
    (card,) = resp.get_json()["cards"]
    assert card["summary"] == "Coverage could not be evaluated"
    assert UNREADABLE in card["detail"]
    assert b.evaluation(resp.get_json())["determination"] == "TECHNICAL_FAILURE"
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("evaluation failed on the patient's data: TypeError" in m for m in logged), logged
    assert real is not fragile


def test_orders_that_cannot_be_read_at_all_are_a_400(app, monkeypatch):
    import cds_service.hooks as hooks

    def broken(*args, **kwargs):
        raise TypeError("unhashable type: 'dict'")

    monkeypatch.setattr(hooks, "process", broken)
    resp = Runner(app, "safety-net").post(rich_request(), "process always fails")
    assert resp.status_code == 400
    assert "could not be read" in resp.get_json()["issue"][0]["diagnostics"]


# -- dates ------------------------------------------------------------------------------------
DATE_KEYS = {"effectiveDateTime", "birthDate", "onsetDateTime", "abatementDateTime", "authored", "authoredOn",
             "performedDateTime", "issued", "recordedDate", "start", "end", "occurrenceDateTime", "date"}


def date_values(day: str) -> list[str]:
    """Every FHIR date/dateTime/instant precision and a spread of time zones, and impossible values."""
    return [
        day[:4], day[:7], day,
        f"{day}T09:00:00Z", f"{day}T09:00:00+00:00", f"{day}T09:00:00-00:00",
        f"{day}T00:00:00+14:00", f"{day}T23:59:59-12:00", f"{day}T09:00:00+05:45", f"{day}T09:00:00-03:30",
        f"{day}T09:00:00.5Z", f"{day}T09:00:00.123456789+09:00", f"{day}T09:00:00", f"{day}T09:00",
        f"{day}T23:59:60Z", f"{day}T24:00:00Z", f"{day}T09:00:00+25:00", f"{day}t09:00:00z",
        "2024-02-29", "2023-02-29", "2025-13-01", "2025-00-10", "2025-06-31", "0001-01-01", "0000-01-01",
        "9999-12-31", "9999-12-31T23:59:59-12:00", "1-1-1", "20250601", "01/06/2025", "yesterday", "", " ",
        f" {day}", f"{day}\n", "−2025-01-01", "2025-06-01T09:00:00Z/2025-06-02",
    ]


def date_paths(body: dict) -> dict[tuple, Path]:
    """The first date element of each kind (resource type, element name) in a request."""
    out: dict[tuple, Path] = {}
    for path in walk(body):
        if path[0] not in ("prefetch", "context") or not isinstance(path[-1], str) or path[-1] not in DATE_KEYS:
            continue
        if not isinstance(get(body, path), str):
            continue
        holder = path[: path.index("resource") + 1] if "resource" in path else path[:2]
        rtype = get(body, holder).get("resourceType") if isinstance(get(body, holder), dict) else None
        out.setdefault((rtype, path[-1]), path)
    return out


def test_every_date_precision_and_time_zone_in_every_date_element(app):
    """Each kind of date element (resource type, element) of the templates, with every value of ``date_values``."""
    runner = Runner(app, "dates")
    seen: set[tuple] = set()
    for template in ("cp-mp-190-rich", "cp-mp-173", "mc-cp-mp-31", "mg-oxy"):
        base = TEMPLATES[template]()
        for kind, path in date_paths(base).items():
            if kind in seen:
                continue
            seen.add(kind)
            original = get(base, path)
            day = original[:10] if len(original) >= 10 else "2025-05-29"
            for value in date_values(day):
                body = copy.deepcopy(base)
                body["hookInstance"] = str(uuid.uuid4())
                put(body, path, value)
                runner.post(body, f"{template}: {'.'.join(map(str, path))} = {value!r}")
    runner.check()
    assert len(seen) >= 12


@pytest.mark.parametrize("when", ["T09:00:00Z", "T00:00:00+14:00", "T23:59:59-12:00", "T09:00:00.123456789+05:45",
                                  "T09:00:00-00:00", ""])
def test_a_dates_calendar_day_is_read_as_written_in_any_time_zone(app, when):
    """Contract §1: date parts as written, no time-zone conversion — the qualifying test counts in every zone."""
    body = b.request(observations=[b.spo2(88, b.before(3) + when)], questionnaire_answers={"I.E": True})
    resp = Runner(app, "dates").post(body, when)
    assert b.evaluation(resp.get_json())["determination"] == "SUPPORTED"


@pytest.mark.parametrize("precision", [4, 7])
def test_a_test_dated_only_by_year_or_month_does_not_qualify(app, precision):
    body = b.request(observations=[b.spo2(88, b.before(3)[:precision])], questionnaire_answers={"I.E": True})
    resp = Runner(app, "dates").post(body, str(precision))
    assert b.evaluation(resp.get_json())["determination"] == "INSUFFICIENT_DOCUMENTATION"


# -- units ------------------------------------------------------------------------------------
UCUM = b.UCUM
UNKNOWN_UNITS = [
    {"value": 50, "unit": "furlong", "code": "[fur_us]", "system": UCUM},
    {"value": 50, "unit": "bar", "code": "bar", "system": UCUM},
    {"value": 50, "unit": "Pa", "code": "Pa", "system": UCUM},
    {"value": 50, "unit": "inHg", "code": "[in_i'Hg]", "system": UCUM},
    {"value": 50, "unit": "", "code": "", "system": UCUM},
    {"value": 50},
    {"value": 50, "unit": "mmHg"},
    {"value": 50, "unit": "%", "code": "%", "system": UCUM},
    {"value": "50", "unit": "mm[Hg]", "code": "mm[Hg]", "system": UCUM},
    {"value": None, "unit": "mm[Hg]", "code": "mm[Hg]", "system": UCUM},
    {"value": 50, "comparator": "<", "unit": "mm[Hg]", "code": "mm[Hg]", "system": UCUM, "extra": {"deep": [[1]]}},
]


@pytest.mark.parametrize("quantity", UNKNOWN_UNITS, ids=[json.dumps(q)[:50] for q in UNKNOWN_UNITS])
def test_a_pao2_in_a_unit_the_service_does_not_know_is_not_read_as_mm_hg(app, quantity):
    """PaO2 50 in mm[Hg] qualifies; in anything the service cannot convert it decides nothing."""
    obs = b.pao2(50, b.before(3), "mm[Hg]")
    body = b.request(observations=[obs], questionnaire_answers={"I.E": True})
    runner = Runner(app, "units")
    assert b.evaluation(runner.post(body, "mm[Hg]").get_json())["determination"] == "SUPPORTED"
    obs["valueQuantity"] = quantity
    body = b.request(observations=[obs], questionnaire_answers={"I.E": True}, hook_instance=str(uuid.uuid4()))
    resp = runner.post(body, json.dumps(quantity))
    runner.check()
    if quantity.get("comparator"):  # "< 50 mm[Hg]" is still below the threshold: either reading is sound
        return
    card = resp.get_json()["cards"][0]
    assert b.evaluation(resp.get_json())["determination"] == "INSUFFICIENT_DOCUMENTATION", card["detail"]
    assert "PaO2" in card["detail"]


@pytest.mark.parametrize("unit,value", [("percent", 88), ("1", 0.88), ("mm[Hg]", 88), ("[ppm]", 880000),
                                        ("", 88), ("%", 8.8e-307)])
def test_an_spo2_in_an_unknown_unit_is_not_read_as_percent(app, unit, value):
    obs = b.spo2(88, b.before(3))
    obs["valueQuantity"] = {"value": value, "unit": unit, "code": unit, "system": UCUM}
    body = b.request(observations=[obs], questionnaire_answers={"I.E": True})
    resp = Runner(app, "units").post(body, unit)
    assert resp.status_code == 200
    assert b.evaluation(resp.get_json())["determination"] != "NOT_MEDICALLY_NECESSARY" or unit == "%"
    if unit != "%":
        assert b.evaluation(resp.get_json())["determination"] == "INSUFFICIENT_DOCUMENTATION"


# -- sizes, nesting, encodings ------------------------------------------------------------------
def _string_fields(body: dict) -> list[Path]:
    return [p for p in walk(body) if p[0] in ("prefetch", "context") and isinstance(get(body, p), str)]


def test_huge_strings_in_any_string_element(app):
    runner = Runner(app, "huge-strings")
    base = rich_request()
    rng = random.Random("huge")
    paths = _string_fields(base)
    for path in rng.sample(paths, min(30, len(paths))) + [("prefetch", "patient", "id"), ("context", "patientId")]:
        for size in (70_000, 1_000_000):
            body = copy.deepcopy(base)
            body["hookInstance"] = str(uuid.uuid4())
            put(body, path, "9" * size)
            runner.post(body, f"{'.'.join(map(str, path))} = {size} characters")
    # a body over the 5 MB limit: 413, an OperationOutcome
    body = copy.deepcopy(base)
    body["prefetch"]["patient"]["name"][0]["family"] = "x" * (6 * 1024 * 1024)
    assert runner.post(body, "over the body limit").status_code == 413
    runner.check()


def nested(depth: int, leaf=1):
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


def test_deep_nesting_inside_resources(app):
    runner = Runner(app, "nesting")
    base = rich_request()
    places = [("prefetch", "patient", "extension"), ("prefetch", "observations", "entry", 0, "resource", "valueQuantity"),
              ("prefetch", "observations", "entry", 0, "resource", "code"), ("prefetch", "coverage", "entry", 0, "resource", "payor"),
              ("context", "draftOrders", "entry", 0, "resource", "extension"), ("prefetch", "conditions", "entry"),
              ("prefetch", "questionnaireResponses", "entry", 0, "resource", "item")]
    for place in places:
        for depth in (10, 50, 58, 66, 1000, 20000):
            body = copy.deepcopy(base)
            body["hookInstance"] = str(uuid.uuid4())
            put(body, place, nested(depth))
            raw = _dumps_deep(body)
            resp = runner.post(body, f"{'.'.join(map(str, place))} nested {depth}", raw=raw)
            if depth > 64:
                assert resp.status_code == 400
    runner.check()


def _dumps_deep(body: dict) -> bytes:
    """json.dumps without its recursion limit: deep nests are written by hand in place of a marker."""
    marker = "@@nested@@"
    found: list = []
    text = json.dumps(strip_dicts(body, found, marker))
    for obj in found:
        parts, closers = [], []
        while isinstance(obj, (list, dict)):
            if isinstance(obj, list):
                parts.append("[")
                closers.append("]")
                obj = obj[0]
            else:
                parts.append('{"n":')
                closers.append("}")
                obj = obj["n"]
        text = text.replace(json.dumps(marker), "".join(parts) + json.dumps(obj) + "".join(reversed(closers)), 1)
    return text.encode()


def _depth_over(obj, limit: int) -> bool:
    d = 0
    while isinstance(obj, (list, dict)) and d <= limit:
        obj = obj[0] if isinstance(obj, list) else next(iter(obj.values()), None)
        d += 1
    return d > limit


def strip_dicts(obj, found: list, marker: str):
    """Replace every deep single-path nest (list or {"n": ...}) by a marker, recording it."""
    if isinstance(obj, (list, dict)) and _depth_over(obj, 40) and _single_path(obj):
        found.append(obj)
        return marker
    if isinstance(obj, dict):
        return {k: strip_dicts(v, found, marker) for k, v in obj.items()}
    if isinstance(obj, list):
        return [strip_dicts(v, found, marker) for v in obj]
    return obj


def _single_path(obj) -> bool:
    while isinstance(obj, (list, dict)):
        if isinstance(obj, list):
            if len(obj) != 1:
                return False
            obj = obj[0]
        else:
            if list(obj) != ["n"]:
                return False
            obj = obj["n"]
    return True


def test_non_utf8_and_odd_encodings(app):
    runner = Runner(app, "encodings")
    base = rich_request()
    text = json.dumps(base, ensure_ascii=False).replace('"Member"', '"Mêmber Ωmega 𝔘"')
    variants: dict[str, bytes] = {
        "latin-1": text.encode("latin-1", "replace"),
        "cp1252 smart quotes": text.replace('"Mêmber', '"\u201cMember\u201d').encode("cp1252", "replace"),
        "utf-8 with BOM": codecs.BOM_UTF8 + text.encode(),
        "utf-16-le": text.encode("utf-16-le"),
        "utf-16 with BOM": text.encode("utf-16"),
        "utf-32": text.encode("utf-32"),
        "invalid continuation byte": text.encode().replace("ê".encode(), b"\xc3\x28"),
        "overlong encoding": text.encode().replace(b'"Member', b'"\xc0\xafMember'),
        "lone surrogate bytes": text.encode().replace("ê".encode(), b"\xed\xa0\x80"),
        "truncated multibyte": text.encode().replace("𝔘".encode(), "𝔘".encode()[:2]),
        "NUL bytes": text.encode().replace(b'"Member', b'"\x00Mem\x00ber'),
        "escaped lone surrogates": text.replace("Mêmber", "\\ud800M\\udfffe\\udc00").encode(),
        "escaped NUL": text.replace("Mêmber", "\\u0000").encode(),
        "NaN value": text.replace('"value": 88', '"value": NaN').encode(),
        "Infinity value": text.replace('"value": 88', '"value": -Infinity').encode(),
        "number 1e400": text.replace('"value": 88', '"value": 1e400').encode(),
        "5000-digit number": text.replace('"value": 88', '"value": 8' + "0" * 5000).encode(),
        "trailing garbage": text.encode() + b"\x00\xff garbage",
        "gzip bytes": gzip.compress(text.encode()),
        "empty": b"",
        "duplicate keys": text.replace('"hook": "order-sign"', '"hook": "order-select", "hook": "order-sign"').encode(),
    }
    for label, raw in variants.items():
        runner.post(base, label, raw=raw)
        runner.post(base, f"{label} (charset=latin-1)", raw=raw, content_type="application/json; charset=latin-1")
    # the hookInstance itself with escaped lone surrogates: refused (400) and still recorded
    hi = json.dumps(base).replace(base["hookInstance"], "\\ud800\\udc00-x").encode()
    assert runner.post(None, "surrogates in hookInstance", raw=hi, service="order-sign-crd").status_code == 400
    recorder = app.extensions["cds_decisions"]
    rejected = recorder.rejected
    assert recorder.flush(10)
    assert recorder.rejected == rejected, "a decision record was refused by the store"
    runner.check()


# -- keys holding the wrong things ------------------------------------------------------------
def test_prefetch_keys_holding_the_wrong_resources_or_no_bundle(app):
    runner = Runner(app, "wrong-resources")
    base = rich_request()
    pat = base["prefetch"]["patient"]
    obs = base["prefetch"]["observations"]["entry"][0]["resource"]
    shapes = {
        "a string": "Bundle", "a number": 7, "a list": [obs], "true": True, "an empty object": {},
        "another type": obs, "a Patient of another patient": {**pat, "id": "someone-else"},
        "an OperationOutcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]},
        "an OperationOutcome without issues": {"resourceType": "OperationOutcome"},
        "a Bundle of Patients": b.bundle([pat]),
        "a Bundle with entry an object": {"resourceType": "Bundle", "type": "searchset", "entry": {"resource": obs}},
        "a Bundle with entry a string": {"resourceType": "Bundle", "entry": "x"},
        "a Bundle with junk entries": {"resourceType": "Bundle", "entry": [None, 1, "x", [], {}, {"resource": None},
                                                                          {"resource": "Observation/1"},
                                                                          {"resource": {"id": "no-type"}},
                                                                          {"resource": {"resourceType": 5}}]},
        "a Bundle with an OperationOutcome warning": {"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning"}]}}, {"resource": obs}]},
        "a Bundle with an OperationOutcome entry of no issues": {"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "OperationOutcome", "issue": "x"}}]},
        "a Bundle with a contained mess": {"resourceType": "Bundle", "entry": [{"resource": {
            **obs, "contained": [1, "x", {"resourceType": "Practitioner"}, {"id": "#"}], "performer": [{"reference": "#"}]}}]},
        "a Bundle of duplicates": {"resourceType": "Bundle", "entry": [{"resource": obs}] * 200},
        "a Bundle whose resources share ids with other types": {"resourceType": "Bundle", "entry": [
            {"resource": {**pat, "resourceType": "Observation"}}, {"resource": {**obs, "id": b.PATIENT_ID}}]},
        "a resourceType in lower case": {**obs, "resourceType": "observation"},
        "resourceType null": {**obs, "resourceType": None},
    }
    for key in list(base["prefetch"]):
        for label, shape in shapes.items():
            body = copy.deepcopy(base)
            body["hookInstance"] = str(uuid.uuid4())
            body["prefetch"][key] = copy.deepcopy(shape)
            resp = runner.post(body, f"prefetch.{key} is {label}")
            assert resp.status_code in (200, 400, 412), (key, label, resp.status_code)
    for label, prefetch in (("a list", [1]), ("a string", "x"), ("null", None), ("empty", {})):
        body = copy.deepcopy(base)
        body["prefetch"] = prefetch
        runner.post(body, f"prefetch is {label}")
    runner.check()


def test_references_that_lead_nowhere_or_loop(app):
    runner = Runner(app, "references")
    base = rich_request()
    refs = [p for p in walk(base) if p[-1] == "reference" and p[0] in ("prefetch", "context")]
    refs = random.Random("references").sample(refs, min(8, len(refs)))
    values = ["", "#", "#missing", "Patient", "/", "//", "Observation/", "/Observation/obs-rest", "Observation/obs-rest/_history",
              "Observation/obs-rest/_history/1/2", "http://", "https://other.example.org/fhir/Practitioner/pr-doc",
              "urn:uuid:not-a-uuid", "urn:oid:1.2.3", "Practitioner/pr-doc?_format=xml", "Observation/obs-rest",
              f"Encounter/{'e' * 65}", "../../etc/passwd", "DeviceRequest/dr-order", "Patient/" + b.PATIENT_ID]
    for path in refs:
        for value in values:
            body = copy.deepcopy(base)
            body["hookInstance"] = str(uuid.uuid4())
            put(body, path, value)
            runner.post(body, f"{'.'.join(map(str, path))} = {value!r}")
    runner.check()


# -- a FHIR server the test controls ----------------------------------------------------------------
Reply = tuple  # (status, headers, body bytes) or ("reset",) / ("hang-up",) / ("short", declared, body)


class ScriptedFhir:
    """An HTTP server on 127.0.0.1 serving ``resources`` as a FHIR server would, each answer passed
    through ``shape(kind, rtype, payload) -> Reply`` (``kind``: "read" or "search")."""

    def __init__(self):
        self.resources: list[dict] = []
        self.shape: Callable[[str, str, dict], Reply] | None = None
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                try:
                    server._answer(self)
                except OSError:
                    self.close_connection = True

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _payload(self, path: str) -> tuple[str, str, dict | None]:
        parts = urlsplit(path)
        segs = [s for s in parts.path.split("/") if s][1:]
        rtype = segs[0] if segs else ""
        if len(segs) >= 2:
            found = next((r for r in self.resources if r.get("resourceType") == rtype and r.get("id") == segs[1]), None)
            return "read", rtype, found
        query = parse_qs(parts.query)
        patient = (query.get("patient") or query.get("subject") or [""])[0].split("/")[-1]
        matches = [r for r in self.resources if r.get("resourceType") == rtype and _about(r, patient)]
        return "search", rtype, {"resourceType": "Bundle", "type": "searchset", "total": len(matches), "entry": [
            {"fullUrl": f"{self.base}/{rtype}/{r.get('id')}", "resource": r, "search": {"mode": "match"}} for r in matches]}

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        kind, rtype, payload = self._payload(h.path)
        if payload is None:
            reply: Reply = (404, {}, json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-found"}]}).encode())
        else:
            reply = (self.shape or _plain)(kind, rtype, payload)
        if reply[0] == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        if reply[0] == "hang-up":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply[0] == "short":
            _, declared, body = reply
            h.send_response(200)
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Content-Length", str(declared))
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        status, headers, body = reply
        h.send_response(status)
        headers = {"Content-Type": "application/fhir+json", **headers}
        for k, v in headers.items():
            h.send_header(k, v)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def _about(resource: dict, patient_id: str) -> bool:
    if not patient_id:
        return True
    if resource.get("resourceType") == "Patient":
        return resource.get("id") == patient_id
    for f in ("subject", "patient", "beneficiary"):
        ref = resource.get(f)
        if isinstance(ref, dict):
            return str(ref.get("reference", "")).split("/")[-1] == patient_id
    return False


def _plain(kind: str, rtype: str, payload: dict) -> Reply:
    return 200, {}, json.dumps(payload).encode()


DEADLINE = 1.0


@pytest.fixture(scope="module")
def fhir():
    server = ScriptedFhir()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def queried_app(fhir):
    return create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW, "FHIR_ALLOWLIST": [fhir.base],
                       "FHIR_DEADLINE_SECONDS": DEADLINE, "FHIR_MAX_RESPONSE_BYTES": 2 * 1024 * 1024,
                       "FHIR_RETRY_BACKOFF": 0.01})


def without_prefetch(body: dict, base: str, keep: tuple = ()) -> dict:
    out = copy.deepcopy(body)
    out["prefetch"] = {k: v for k, v in (body.get("prefetch") or {}).items() if k in keep}
    out["hookInstance"] = str(uuid.uuid4())
    out["fhirServer"] = base
    out["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                "scope": "patient/*.read", "subject": "cds-coverage-service"}
    return out


class TimedRunner(Runner):
    """Also checks every answer comes within the deadline plus two seconds (no hang)."""

    def post(self, body, label, raw=None, service=None, content_type="application/json"):
        started = time.perf_counter()
        resp = super().post(body, label, raw, service, content_type)
        elapsed = time.perf_counter() - started
        if elapsed > DEADLINE + 2.0:  # the deadline, evaluation and a loaded machine: no hang
            self.failures.append(f"{label}: answered in {elapsed:.2f} s")
        return resp


@pytest.mark.parametrize("template", ["cp-mp-190-rich", "cp-mp-173", "mg-oxy"])
def test_mutated_resources_from_the_fhir_server(queried_app, fhir, template):
    """The FHIR server answers with resources that have wrong types, missing and unknown elements."""
    base = TEMPLATES[template]()
    runner = TimedRunner(queried_app, "fhir-server-mutations")
    served = request_resources(base)
    fhir.resources, fhir.shape = served, None
    assert not problems(runner.post(without_prefetch(base, fhir.base), "unmutated"), base)
    holder = {"resources": served}
    candidates = mutations(holder, [("resources",)])
    rng = random.Random(f"fhir-{template}")
    try:
        for label, mutate in rng.sample(candidates, min(SAMPLE // 3, len(candidates))):
            mutated = copy.deepcopy(holder)
            try:
                mutate(mutated)
            except (TypeError, KeyError, IndexError):
                continue
            fhir.resources = [r for r in mutated["resources"] if isinstance(r, dict)] \
                if isinstance(mutated.get("resources"), list) else []
            runner.post(without_prefetch(base, fhir.base), f"{template}: served {label}")
    finally:
        fhir.resources = []
    runner.check()


def _bundle_shapes() -> dict[str, Callable[[str, str, dict], Reply]]:
    def body_of(payload) -> bytes:
        return json.dumps(payload).encode()

    def entries(fn):
        def shape(kind, rtype, payload):
            if kind != "search":
                return _plain(kind, rtype, payload)
            out = dict(payload)
            out["entry"] = fn(payload.get("entry") or [], rtype)
            return 200, {}, body_of(out)
        return shape

    def bundle(fn):
        def shape(kind, rtype, payload):
            if kind != "search":
                return _plain(kind, rtype, payload)
            return 200, {}, body_of(fn(dict(payload)))
        return shape

    def every(fn):
        return lambda kind, rtype, payload: fn(kind, rtype, payload)

    deep = b"[" * 100_000 + b"]" * 100_000
    shapes = {
        "entry an object": entries(lambda e, t: {"resource": e[0]["resource"]} if e else {}),
        "entry a string": entries(lambda e, t: "entry"),
        "junk entries": entries(lambda e, t: e + [None, 1, "x", [], {}, {"resource": None}, {"resource": {"id": "x"}},
                                                  {"resource": {"resourceType": ["Observation"]}}]),
        "resources of another type": entries(lambda e, t: [{**x, "resource": {**x["resource"], "resourceType": "Patient"}}
                                                           for x in e]),
        "resources of another patient": entries(lambda e, t: [{**x, "resource": {**x["resource"], "subject": {"reference": "Patient/other"}}}
                                                              for x in e]),
        "an OperationOutcome error entry": entries(lambda e, t: e + [{"resource": {"resourceType": "OperationOutcome",
                                                                                   "issue": [{"severity": "fatal"}]}}]),
        "an OperationOutcome entry with junk issues": entries(lambda e, t: e + [{"resource": {"resourceType": "OperationOutcome",
                                                                                              "issue": [1, "x", None]}}]),
        "fullUrl junk": entries(lambda e, t: [{**x, "fullUrl": 5} for x in e]),
        "a huge string in each resource": entries(lambda e, t: [{**x, "resource": {**x["resource"], "text": {"div": "x" * 300_000}}}
                                                               for x in e[:3]]),
        "unknown elements everywhere": entries(lambda e, t: [{**x, "unknownEntryElement": [1], "resource": {**x["resource"], **UNKNOWN}}
                                                            for x in e]),
        "link not a list": bundle(lambda p: {**p, "link": "next"}),
        "link entries junk": bundle(lambda p: {**p, "link": [1, None, {"relation": "next"}, {"relation": "next", "url": 5}]}),
        "next link relative": bundle(lambda p: {**p, "link": [{"relation": "next", "url": "?page=2&x=%zz"}]}),
        "next link javascript": bundle(lambda p: {**p, "link": [{"relation": "next", "url": "javascript:alert(1)"}]}),
        "next link ftp": bundle(lambda p: {**p, "link": [{"relation": "next", "url": "ftp://127.0.0.1/fhir/x"}]}),
        "next link huge": bundle(lambda p: {**p, "link": [{"relation": "next", "url": "http://127.0.0.1:1/" + "a" * 100_000}]}),
        "next link with a bad port": bundle(lambda p: {**p, "link": [{"relation": "next", "url": "http://127.0.0.1:99999/fhir"}]}),
        "total a string": bundle(lambda p: {**p, "total": "many", "type": 7}),
        "no resourceType": bundle(lambda p: {k: v for k, v in p.items() if k != "resourceType"}),
        "a list": every(lambda k, t, p: (200, {}, b"[1, 2]")),
        "a string": every(lambda k, t, p: (200, {}, b'"Bundle"')),
        "null": every(lambda k, t, p: (200, {}, b"null")),
        "a read answering another type": every(lambda k, t, p: (200, {}, body_of({**p, "resourceType": "Basic"}))
                                               if k == "read" else _plain(k, t, p)),
        "a read answering another id": every(lambda k, t, p: (200, {}, body_of({**p, "id": "someone-else"}))
                                             if k == "read" else _plain(k, t, p)),
        "a read answering a Bundle": every(lambda k, t, p: (200, {}, body_of({"resourceType": "Bundle", "entry": [{"resource": p}]}))
                                           if k == "read" else _plain(k, t, p)),
        "an OperationOutcome with 200": every(lambda k, t, p: (200, {}, body_of({"resourceType": "OperationOutcome"}))),
        "nesting deeper than the parser goes": every(lambda k, t, p: (200, {}, deep)),
        "nesting 500 deep in a resource": entries(lambda e, t: [{**x, "resource": {**x["resource"], "extension": nested(500)}} for x in e]),
        "over the response size limit": every(lambda k, t, p: (200, {}, b'{"resourceType": "Bundle", "x": "' + b"x" * 3_000_000 + b'"}')),
        "declared over the size limit": every(lambda k, t, p: (200, {"Content-Length": str(50 * 1024 * 1024)}, b"{}")),
        "latin-1 body": every(lambda k, t, p: (200, {"Content-Type": "application/fhir+json; charset=iso-8859-1"},
                                               json.dumps(p, ensure_ascii=False).replace('"Test"', '"Tést"').encode("latin-1", "replace"))),
        "utf-16 body": every(lambda k, t, p: (200, {}, json.dumps(p).encode("utf-16"))),
        "utf-8 BOM": every(lambda k, t, p: (200, {}, codecs.BOM_UTF8 + json.dumps(p).encode())),
        "invalid utf-8 in a string": every(lambda k, t, p: (200, {}, json.dumps(p).encode().replace(b'"', b'"\xff', 1))),
        "escaped lone surrogates": every(lambda k, t, p: (200, {}, json.dumps(p).replace('"id": "', '"id": "\\ud800', 1).encode())),
        "NaN values": every(lambda k, t, p: (200, {}, json.dumps(p).replace('"value": 8', '"value": NaN, "v": 8').encode())),
        "gzip declared, plain sent": every(lambda k, t, p: (200, {"Content-Encoding": "gzip"}, json.dumps(p).encode())),
        "gzip corrupt": every(lambda k, t, p: (200, {"Content-Encoding": "gzip"}, gzip.compress(json.dumps(p).encode())[:-12])),
        "gzip correct": every(lambda k, t, p: (200, {"Content-Encoding": "gzip"}, gzip.compress(json.dumps(p).encode()))),
        "html": every(lambda k, t, p: (200, {"Content-Type": "text/html"}, b"<html><body>Sign in</body></html>")),
        "empty 200": every(lambda k, t, p: (200, {}, b"")),
        "204": every(lambda k, t, p: (204, {}, b"")),
        "201 with the answer": every(lambda k, t, p: (201, {}, body_of(p))),
        "302 without Location": every(lambda k, t, p: (302, {}, b"")),
        "304": every(lambda k, t, p: (304, {}, b"")),
        "410": every(lambda k, t, p: (410, {}, b"")),
        "418": every(lambda k, t, p: (418, {}, b"teapot")),
        "500 with html": every(lambda k, t, p: (500, {"Content-Type": "text/html"}, b"<h1>boom</h1>")),
        "503 always": every(lambda k, t, p: (503, {"Retry-After": "0"}, b"")),
        "429 Retry-After an hour": every(lambda k, t, p: (429, {"Retry-After": "3600"}, b"")),
        "429 Retry-After a date": every(lambda k, t, p: (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"")),
        "429 Retry-After negative": every(lambda k, t, p: (429, {"Retry-After": "-5"}, b"")),
        "status 599": every(lambda k, t, p: (599, {}, body_of(p))),
        "connection reset": every(lambda k, t, p: ("reset",)),
        "hang-up without an answer": every(lambda k, t, p: ("hang-up",)),
        "body shorter than declared": every(lambda k, t, p: ("short", len(body_of(p)) + 100, body_of(p))),
    }
    return shapes


BUNDLE_SHAPES = _bundle_shapes()


@pytest.mark.parametrize("template", ["cp-mp-190-rich", "mc-cp-mp-31"])
def test_broken_bundles_and_broken_http_from_the_fhir_server(queried_app, fhir, template):
    base = TEMPLATES[template]()
    runner = TimedRunner(queried_app, "fhir-server-answers")
    fhir.resources = request_resources(base)
    try:
        for label, shape in BUNDLE_SHAPES.items():
            for scope in ("every type", "Observation", "Coverage") if template == "cp-mp-190-rich" else ("every type",):
                if scope == "every type":
                    fhir.shape = shape
                else:
                    fhir.shape = lambda k, t, p, s=shape, only=scope: s(k, t, p) if t == only else _plain(k, t, p)
                resp = runner.post(without_prefetch(base, fhir.base), f"{template}: {label} ({scope})")
                assert resp.status_code == 200, (label, scope, resp.get_json())
            # and with part of the prefetch given: only the rest is queried
            fhir.shape = shape
            runner.post(without_prefetch(base, fhir.base, keep=("patient", "coverage")), f"{template}: {label} (partial prefetch)")
    finally:
        fhir.shape, fhir.resources = None, []
    runner.check()
