"""FHIR servers for the data-gathering tests: a real one (sekmet-fhir) and a fault injector.

``fhir_server`` (session): a real FHIR R4 server, sekmet-fhir, in its own process on
127.0.0.1 with a free port and a throw-away SQLite file, loaded with every fhir_examples
request's resources and ../shared/peer-data's home-oxygen patients, then ``ANALYZE``d.
The service reaches it through a small recording proxy (``RecordingProxy``) that logs
every request it forwards (method, path, Authorization) and can add latency; sekmet's
``base_url`` is the proxy's, so its paging links lead back through the proxy.

``FaultServer``: a threaded ``http.server`` holding a few resources in memory, that can be
told, per resource type, to be slow, fail with a status, send malformed JSON, loop its
``next`` links, page forever, or point ``next`` at another server. It records every request.

Both are real HTTP servers on 127.0.0.1; nothing here mocks the HTTP layer.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "fhir_examples"
PEER_DATA = REPO.parent / "shared" / "peer-data"
PEER_BUNDLE = PEER_DATA / "test-ehr-home-oxygen-patients.collection-bundle.json"
STARTUP_TIMEOUT = 60.0


class _Server(ThreadingHTTPServer):
    """Threaded, with a listen backlog that absorbs a burst of concurrent connects (the default, 5,
    makes the kernel drop SYNs under a burst: a 1 s retransmission that is the test's, not the client's)."""

    request_queue_size = 128
    daemon_threads = True
    block_on_close = False


def load_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def example_files() -> list[Path]:
    """Every example request named by an index.json (all policy folders, present and future)."""
    out = []
    for index in sorted(EXAMPLES.glob("*/index.json")):
        for entry in load_json(index):
            out.append(index.parent / entry["file"])
    return out


def request_resources(body: Mapping) -> list[dict]:
    """The resources a hook request carries in its prefetch (Bundles unpacked), in order."""
    out = []
    for value in (body.get("prefetch") or {}).values():
        if not isinstance(value, Mapping):
            continue
        if value.get("resourceType") == "Bundle":
            out += [e["resource"] for e in value.get("entry") or [] if isinstance(e.get("resource"), Mapping)]
        elif value.get("resourceType") not in (None, "OperationOutcome"):
            out.append(value)
    return out


_PATIENT_RESOURCES: dict[str, set[tuple[str, str]]] | None = None


def _patient_resources() -> dict[str, set[tuple[str, str]]]:
    """Across every example: patient id -> the resources about that patient."""
    global _PATIENT_RESOURCES
    if _PATIENT_RESOURCES is None:
        out: dict[str, set[tuple[str, str]]] = {}
        for path in example_files():
            for res in request_resources(load_json(path)):
                pid = _patient_of(res)
                if pid and isinstance(res.get("id"), str):
                    out.setdefault(pid, set()).add((res["resourceType"], res["id"]))
        _PATIENT_RESOURCES = out
    return _PATIENT_RESOURCES


def _patient_of(resource: Mapping) -> str | None:
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    for f in ("subject", "patient", "beneficiary"):
        ref = resource.get(f)
        if isinstance(ref, Mapping) and str(ref.get("reference", "")).startswith("Patient/"):
            return str(ref["reference"]).split("/")[-1]
    return None


def transaction(resources: Iterable[Mapping]) -> dict:
    unique: dict[tuple[str, str], Mapping] = {}
    for res in resources:
        if isinstance(res.get("id"), str):
            unique[(res["resourceType"], res["id"])] = res
    return {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{t}/{i}"}} for (t, i), r in unique.items()],
    }


# -- a recording, delaying proxy ------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None

    @property
    def resource_type(self) -> str:
        parts = urlsplit(self.path).path.split("/")
        return parts[2] if len(parts) > 2 else ""

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


class RecordingProxy:
    """Forwards to ``target`` (host, port); records each request; optional added latency per request."""

    def __init__(self, target_port: int, port: int | None = None, delay: float = 0.0):
        self.target_port = target_port
        self.delay = delay
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no delayed-ACK stall)

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.seen.append(Seen(self.command, self.path, self.headers.get("Authorization")))
                if proxy.delay:
                    time.sleep(proxy.delay)
                conn = getattr(proxy._local, "conn", None)
                if conn is None:
                    conn = proxy._local.conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "keep-alive")}
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    proxy._local.conn = None
                    self.send_error(502)
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self._local = threading.local()
        self.server = _Server(("127.0.0.1", port or 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="fhir-proxy",
                                        daemon=True)

    def start(self) -> "RecordingProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def mark(self) -> int:
        with self._lock:
            return len(self.seen)

    def since(self, mark: int) -> list[Seen]:
        with self._lock:
            return list(self.seen[mark:])


# -- the real FHIR server -------------------------------------------------------------------------
@dataclass
class FhirServer:
    base: str  # what the service is given: the proxy's base URL
    direct: str  # sekmet itself
    proxy: RecordingProxy
    process: subprocess.Popen
    db: Path
    log: Path
    loaded: int = 0
    token: str = "test-access-token-0f9e8d"

    def put_all(self, resources: Iterable[Mapping], delete: Iterable[tuple[str, str]] = ()) -> int:
        bundle = transaction(resources)
        bundle["entry"] = [{"request": {"method": "DELETE", "url": f"{t}/{i}"}} for t, i in delete] + bundle["entry"]
        resp = requests.post(self.direct, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=120)
        if resp.status_code != 200:
            raise RuntimeError(f"loading the FHIR server failed: HTTP {resp.status_code}: {resp.text[:500]}")
        return len(bundle["entry"])

    def checkout(self, body: Mapping) -> None:
        """Make the server hold exactly this example's data for its patient.

        Several examples may share a patient id (one patient, many scenarios): the resources about
        that patient from the other examples are deleted, then this example's are written.
        """
        patient = (body.get("context") or {}).get("patientId")
        mine = {(r["resourceType"], r["id"]) for r in request_resources(body) if isinstance(r.get("id"), str)}
        others = sorted(_patient_resources().get(patient, set()) - mine)
        self.put_all(request_resources(body), delete=others)

    def analyze(self) -> None:
        with sqlite3.connect(self.db, timeout=30) as conn:
            conn.execute("ANALYZE")


# sekmet-fhir 0.1.1 defines no search parameters for QuestionnaireResponse and DeviceRequest (it
# ignores them with a warning and returns every patient's resources). The launcher adds these
# standard FHIR R4 parameters to its table before the server starts, so it indexes and answers
# them like any conformant R4 server; everything else is sekmet as published.
_LAUNCHER = """
import sys
import uvicorn
from sekmet.fhir import search_params as sp
R4 = {
    "QuestionnaireResponse": [("subject", "reference", "subject", None), ("patient", "reference", "subject", "Patient"),
                              ("status", "token", "status", None), ("authored", "date", "authored", None)],
    "DeviceRequest": [("subject", "reference", "subject", None), ("patient", "reference", "subject", "Patient"),
                      ("status", "token", "status", None), ("intent", "token", "intent", None),
                      ("code", "token", "codeCodeableConcept", None), ("authored-on", "date", "authoredOn", None)],
}
for rtype, params in R4.items():
    table = sp.PARAMS.setdefault(rtype, {})
    for name, kind, path, target in params:
        table.setdefault(name, sp.SearchParam(name, kind, (path,), target))
uvicorn.run("sekmet.main:app_factory", factory=True, host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", access_log=False)
"""


def _sekmet_available() -> bool:
    try:
        import sekmet  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def start_sekmet(workdir: Path, delay: float = 0.0) -> FhirServer:
    """Start sekmet-fhir on 127.0.0.1 behind a RecordingProxy; wait until it answers /metadata."""
    if not _sekmet_available():
        raise RuntimeError("sekmet-fhir is not installed: the test extra installs it (pip install -e '.[test]')")
    port = free_port()
    proxy = RecordingProxy(port, delay=delay).start()
    base = f"http://127.0.0.1:{proxy.port}/fhir"
    db = workdir / "sekmet.sqlite3"
    settings = workdir / "sekmet-settings.yaml"
    settings.write_text(json.dumps({  # JSON is YAML
        "base_url": base, "host": "127.0.0.1", "port": port, "db_path": str(db), "data_dir": str(workdir),
        "simulator": {"enabled": False}, "validation": {"inbound": "off"}, "log_inbound": False,
        "server_auth": {"types": ["none"]},
    }))
    log = workdir / "sekmet.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    env["SEKMET_CONFIG"] = str(settings)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(port)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    direct = f"http://127.0.0.1:{port}/fhir"
    server = FhirServer(base, direct, proxy, proc, db, log)
    until = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            stop_sekmet(server)
            raise RuntimeError(f"sekmet-fhir exited with {proc.returncode} at start-up:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{direct}/metadata", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        if time.monotonic() > until:
            stop_sekmet(server)
            raise RuntimeError(f"sekmet-fhir did not answer within {STARTUP_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def stop_sekmet(server: FhirServer) -> None:
    server.proxy.stop()
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


def load_test_data(server: FhirServer) -> int:
    resources: list[Mapping] = []
    for path in example_files():
        resources += request_resources(load_json(path))
    resources += [e["resource"] for e in load_json(PEER_BUNDLE)["entry"]]
    count = server.put_all(resources)
    server.analyze()
    return count


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory):
    """sekmet-fhir with the examples and the peer-data patients, for the whole session."""
    workdir = tmp_path_factory.mktemp("sekmet")
    try:
        server = start_sekmet(workdir)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.loaded = load_test_data(server)
        yield server
    finally:
        stop_sekmet(server)
        shutil.rmtree(workdir, ignore_errors=True)


# -- the fault-injecting server -------------------------------------------------------------------
FAULTS = ("ok", "slow", "500", "401", "503-once", "429-once", "malformed", "not-fhir", "next-loop",
          "next-endless", "next-offbase", "redirect", "drip")


@dataclass
class FaultServer:
    """FHIR-ish server with per-type faults. ``faults``: {resource type or "*": fault}."""

    resources: list[dict] = field(default_factory=list)
    faults: dict[str, str] = field(default_factory=dict)
    slow_seconds: float = 5.0
    offbase_url: str = "http://127.0.0.1:9/fhir"

    def __post_init__(self):
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._once: set[str] = set()
        fault_server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no delayed-ACK stall)

            def log_message(self, *args):
                pass

            def do_GET(self):
                fault_server._handle(self)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="fault-server",
                                        daemon=True)

    def start(self) -> "FaultServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- behaviour ------------------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype="application/fhir+json", extra=None):
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass  # the client gave up (deadline): fine

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.seen.append(Seen("GET", h.path, h.headers.get("Authorization")))
        parts = urlsplit(h.path)
        segs = [s for s in parts.path.split("/") if s][1:]  # drop "fhir"
        rtype = segs[0] if segs else ""
        fault = self.faults.get(rtype) or self.faults.get("*") or "ok"
        if fault == "slow":
            time.sleep(self.slow_seconds)
        elif fault in ("500", "401"):
            return self._send(h, int(fault), json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "exception", "diagnostics": "injected"}]}).encode())
        elif fault in ("503-once", "429-once"):
            key = f"{fault}:{h.path}"
            if key not in self._once:
                self._once.add(key)
                return self._send(h, int(fault[:3]), b"{}", extra={"Retry-After": "0"})
        elif fault == "malformed":
            return self._send(h, 200, b'{"resourceType": "Bundle", "entry": [')
        elif fault == "not-fhir":
            return self._send(h, 200, b"<html>login</html>", "text/html")
        elif fault == "redirect":
            return self._send(h, 302, b"", extra={"Location": self.offbase_url + parts.path[5:]})
        elif fault == "drip":
            return self._drip(h)
        if len(segs) >= 2:
            found = next((r for r in self.resources if r["resourceType"] == rtype and r.get("id") == segs[1]), None)
            if found is None:
                return self._send(h, 404, json.dumps({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "not-found"}]}).encode())
            return self._send(h, 200, json.dumps(found).encode())
        query = parse_qs(parts.query)
        patient = (query.get("patient") or query.get("subject") or [""])[0].split("/")[-1]
        matches = [r for r in self.resources if r["resourceType"] == rtype and _about(r, patient)]
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                  "entry": [{"fullUrl": f"{self.base}/{r['resourceType']}/{r['id']}", "resource": r,
                             "search": {"mode": "match"}} for r in matches],
                  "link": [{"relation": "self", "url": f"http://127.0.0.1:{self.port}{h.path}"}]}
        if fault == "next-loop":
            bundle["link"].append({"relation": "next", "url": f"http://127.0.0.1:{self.port}{h.path}"})
        elif fault == "next-endless":
            page = int((query.get("_page") or ["0"])[0]) + 1
            bundle["link"].append({"relation": "next", "url": f"{self.base}/{rtype}?patient={patient}&_page={page}"})
        elif fault == "next-offbase":
            bundle["link"].append({"relation": "next", "url": f"{self.offbase_url}/{rtype}?patient={patient}&_page=1"})
        return self._send(h, 200, json.dumps(bundle).encode())

    def _drip(self, h: BaseHTTPRequestHandler) -> None:
        """Headers at once, then a byte at a time, slower than any deadline."""
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Content-Length", "100000")
            h.end_headers()
            for _ in range(100000):
                h.wfile.write(b" ")
                h.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    def requests_since(self, mark: int = 0) -> list[Seen]:
        with self._lock:
            return list(self.seen[mark:])


def _about(resource: Mapping, patient_id: str) -> bool:
    if not patient_id:
        return True
    if resource.get("resourceType") == "Patient":
        return resource.get("id") == patient_id
    for f in ("subject", "patient", "beneficiary"):
        ref = resource.get(f)
        if isinstance(ref, Mapping):
            return str(ref.get("reference", "")).split("/")[-1] == patient_id
    return False


@pytest.fixture
def fault_server():
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.stop()
