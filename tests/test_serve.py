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
