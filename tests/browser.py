"""A real server and a real browser for the console's browser tests (tests/test_console_browser.py).

The app runs as in production where it matters: client authentication ON (a trusted test EHR with its
own EC key), a SQLite file store, a console admin token, behind werkzeug's threaded server on
127.0.0.1. Decisions are made the way an EHR makes them: signed hook calls and feedback over HTTP,
on several days (the app's clock is moved while seeding).

The browser is Debian's Chromium (/usr/bin/chromium, installed by `make test`), driven by Playwright,
headless, with background networking off. No browser is ever downloaded. Without Chromium the tests
skip with the reason, except under CI (CI=true), where they fail.

    from browser import chromium, console_context, console_site, page   # fixtures
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from werkzeug.serving import make_server

from cds_service import create_app
from conftest import EXAMPLES, FIXED_NOW, REPO, load_json

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions",
                 "--metrics-recording-only", "--no-default-browser-check"]
ARTIFACTS = REPO / "test-artifacts" / "console"
CONSOLE_TOKEN = "browser-test-console-token-5f1c2a"
EHR = "https://ehr.test.example"
_KEY = ec.generate_private_key(ec.SECP384R1())
_JWK = {**json.loads(ECAlgorithm.to_jwk(_KEY.public_key())), "kid": "ehr-1", "alg": "ES384", "use": "sig"}

# (day in December 2025, hour, scenario): what the EHR signs, and when.
SEED = [
    (20, 9, "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json"),
    (20, 11, "mg-oxy-2024/01-adult-copd-rest-spo2-88-e1390.json"),
    (22, 10, "cp-mp-190-2023/03-adult-sleep-only-portable-e1392.json"),
    (22, 14, "cp-mp-173-2024/04-implant-nonmalignant-trial-49pct-not-medically-necessary.json"),
    (26, 8, "cp-mp-190-2023/12-adult-stable-state-unattested-e1390.json"),
    (26, 16, "mc-cp-mp-31-2025/01-skin-tags-eyelid-affect-eyesight-11200.json"),
    (29, 9, "cp-mp-190-2023/23-oximeter-e0445-not-applicable.json"),
    (29, 13, "cp-mp-190-2023/02-adult-overnight-oximetry-e1390.json"),
    (31, 10, "cp-mp-190-2023/09-adult-dme-supplier-test-e1390.json"),
]
# scenario → (outcome, override code) sent as feedback on its card
FEEDBACK = {
    "cp-mp-190-2023/03-adult-sleep-only-portable-e1392.json": ("overridden", "clinical-judgment"),
    "cp-mp-190-2023/12-adult-stable-state-unattested-e1390.json": ("overridden", "documentation-elsewhere"),
    "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json": ("accepted", None),
}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Site:
    base: str
    app: object
    cards: dict = field(default_factory=dict)  # scenario → its card
    requests: dict = field(default_factory=dict)  # scenario → the hook request sent

    def url(self, path: str) -> str:
        return self.base + path


def _bearer(aud: str) -> str:
    now = int(time.time())
    claims = {"iss": EHR, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, _KEY, algorithm="ES384", headers={"kid": "ehr-1", "typ": "JWT"})


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {_bearer(url)}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


@pytest.fixture(scope="session")
def console_site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("console-site")
    clock = Clock(FIXED_NOW)
    app = create_app({
        "AUTH_REQUIRED": True,
        "TRUSTED_CLIENTS": [{"iss": EHR, "jwks": {"keys": [_JWK]}, "name": "Test EHR"}],
        "DATABASE_URL": f"sqlite:///{folder / 'decisions.sqlite3'}",
        "INSTANCE_DIR": str(folder / "instance"),
        "CONSOLE_TOKEN": CONSOLE_TOKEN,
        "SECRET_KEY": "browser-test-secret",
        "CLOCK": clock,
    })
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site = Site(f"http://127.0.0.1:{server.server_port}", app)
    hook = site.url("/cds-services/order-sign-crd")
    for day, hour, name in SEED:
        clock.now = datetime(2025, 12, day, hour, tzinfo=timezone.utc)
        body = load_json(EXAMPLES / name)
        body["hookInstance"] = str(uuid.uuid4())
        status, payload = _post(hook, body)
        assert status == 200, (name, payload)
        site.requests[name], site.cards[name] = body, payload["cards"][0]
    clock.now = FIXED_NOW
    entries = [{"card": site.cards[name]["uuid"], "outcome": outcome, "outcomeTimestamp": "2025-12-31T12:00:00Z",
                **({"overrideReason": {"reason": {"system": "http://example.org/fhir/cds-coverage/CodeSystem/coverage-override-reason",
                                                  "code": code, "display": code}}} if code else {})}
               for name, (outcome, code) in FEEDBACK.items()]
    status, _ = _post(hook + "/feedback", {"feedback": entries})
    assert status == 200
    assert app.extensions["cds_decisions"].flush(30)
    try:
        yield site
    finally:
        server.shutdown()
        thread.join(timeout=10)
        app.extensions["cds_decisions"].close()


@pytest.fixture(scope="session")
def chromium():
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} not installed (make test installs Debian's chromium; as root: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def console_context(chromium, console_site):
    """One browser context for the session, logged in to the console through its login form."""
    context = chromium.new_context(viewport={"width": 1360, "height": 900}, locale="en-US")
    context.set_default_timeout(15000)
    pg = context.new_page()
    pg.goto(console_site.url("/console/login"))
    pg.get_by_label("Admin token").fill(CONSOLE_TOKEN)
    pg.get_by_role("button", name="Log in").click()
    pg.wait_for_url("**/console/")
    pg.close()
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(console_context):
    """A new tab in the logged-in context; console errors, page errors and failed requests are collected."""
    pg = console_context.new_page()
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: pg.problems.append(f"request failed: {r.url}"))
    try:
        yield pg
    finally:
        pg.close()


def shot(pg, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path
