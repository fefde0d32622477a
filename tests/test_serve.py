"""`cds-service serve` runs the production server (gunicorn) and answers hook calls."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import EXAMPLES, REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cds_service", "serve", "--port", str(port), "--workers", "1", "--threads", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/cds-services", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode(errors='replace')}")
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("server did not start within 30 s")
    yield base, proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_gunicorn_serves_hook_calls(server):
    base, proc = server
    body = (EXAMPLES / "cp-mp-190-2023/02-adult-overnight-oximetry-e1390.json").read_bytes()
    req = urllib.request.Request(base + "/cds-services/order-sign-crd", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        payload = json.load(resp)
        assert resp.status == 200
    assert payload["cards"][0]["summary"] == "SUPPORTED: E1390 stationary oxygen (CP.MP.190 rev 01/23)"
    proc.terminate()
    output = proc.communicate(timeout=15)[0].decode(errors="replace")
    assert "Starting gunicorn" in output and "gthread" in output


def test_large_request_is_answered_and_its_memory_handed_back(server):
    """A 2,000-Observation prefetch (> 1 MB) under gunicorn: the answer is right, and the worker's
    post-request hook (collect, malloc_trim) runs without disturbing the next request."""
    from bench.workload import full_prefetch_request

    base, proc = server
    body = json.dumps(full_prefetch_request(2000, 30)).encode()
    assert len(body) > 1024 * 1024
    for _ in range(2):
        req = urllib.request.Request(base + "/cds-services/order-sign-crd", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.load(resp)
        assert payload["cards"][0]["summary"].startswith("SUPPORTED: E1390")
    assert proc.poll() is None


def test_post_request_trims_only_after_large_bodies(monkeypatch):
    from cds_service import server as srv

    calls = []
    monkeypatch.setattr(srv, "_malloc_trim", lambda pad: calls.append(pad))
    srv._post_request(None, None, {"CONTENT_LENGTH": "1000"}, None)
    srv._post_request(None, None, {"CONTENT_LENGTH": "not a number"}, None)
    srv._post_request(None, None, {}, None)
    assert calls == []
    srv._post_request(None, None, {"CONTENT_LENGTH": str(2 * 1024 * 1024)}, None)
    assert calls == [0]


def test_gc_is_tuned_for_served_workers():
    """serve() freezes what the app loaded and sets the configured thresholds (in a child process,
    so the test run's own collector is left alone)."""
    code = (
        "import gc\n"
        "from cds_service.server import tune_gc\n"
        "from cds_service.config import DEFAULTS\n"
        "before = gc.get_freeze_count()\n"
        "tune_gc(DEFAULTS['GC_THRESHOLDS'])\n"
        "print(gc.get_threshold(), gc.get_freeze_count() > before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "(50000, 20, 100) True", out.stderr
