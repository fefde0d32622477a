"""Outbound FHIR calls to the EHR's server: pooled, bounded, allowlisted, token-safe.

Everything the service sends to a ``fhirServer`` goes through :class:`FhirClient`:

* only to a base URL on the allowlist (:class:`Allowlist`); ``next`` links and absolute
  references must stay under that same base, and redirects are never followed;
* over one pooled :class:`requests.Session` (keep-alive, per-host connection pool), with
  TLS certificates verified, no cookies kept, and nothing taken from the environment
  (proxies, ``.netrc`` credentials);
* with a timeout per request that never reaches past the caller's deadline, a bounded
  body size, and retries on 429/503 with backoff (``Retry-After`` honoured) only while
  the deadline allows;
* with the access token only in the ``Authorization`` header: it is never logged and
  never part of an error text (errors say what failed, not what was sent or received).
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

log = logging.getLogger("cds_service.fhir")

FHIR_JSON = "application/fhir+json"
USER_AGENT = "cds-coverage-service (Da Vinci CRD)"


# -- base URLs and the allowlist ---------------------------------------------------------
def normalize_base(url: object) -> str | None:
    """``scheme://host[:port]/path`` lower-cased where case does not matter, default port and
    trailing slash dropped; None for anything that is not a plain http(s) base URL (user info,
    query or fragment are refused: they have no place in a FHIR base and are classic SSRF tricks)."""
    if not isinstance(url, str) or not url.strip():
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    if parts.query or parts.fragment or any(c in url for c in " \t\r\n\\"):
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    if "/../" in f"{path}/" or "/./" in f"{path}/":
        return None
    return f"{scheme}://{host}{path}"


def under_base(url: str, base: str) -> bool:
    """True when ``url`` (absolute) is ``base`` itself or below it, on the same origin."""
    parts = urlsplit(url)
    if parts.username or parts.password or parts.fragment:
        return False
    target = normalize_base(f"{parts.scheme}://{parts.netloc}{parts.path}")
    return target is not None and (target == base or target.startswith(base + "/"))


@dataclass(frozen=True)
class AllowedServer:
    base: str
    token_required: bool = False


class Allowlist:
    """The FHIR servers the service may contact (configuration ``FHIR_ALLOWLIST``).

    Entries are base URLs, or ``{"url": ..., "token_required": true}`` for a server that
    must not be queried without ``fhirAuthorization.access_token``.
    """

    def __init__(self, entries: Iterable[object] = (), token_required_default: bool = False):
        self.servers: dict[str, AllowedServer] = {}
        for entry in entries or ():
            url, required = entry, token_required_default
            if isinstance(entry, Mapping):
                url = entry.get("url")
                required = bool(entry.get("token_required", token_required_default))
            base = normalize_base(url)
            if base is None:
                raise ValueError(f"FHIR_ALLOWLIST: not an http(s) base URL: {url!r}")
            self.servers[base] = AllowedServer(base, required)

    def extended(self, more: Iterable[object], token_required: bool = False) -> "Allowlist":
        """This allowlist plus ``more`` base URLs (e.g. the authenticated client's own FHIR servers)."""
        out = Allowlist()
        out.servers = dict(self.servers)
        for url in more or ():
            base = normalize_base(url)
            if base is not None and base not in out.servers:
                out.servers[base] = AllowedServer(base, token_required)
        return out

    def lookup(self, url: object) -> AllowedServer | None:
        base = normalize_base(url)
        return self.servers.get(base) if base else None


# -- results -------------------------------------------------------------------------------
@dataclass
class Fetch:
    """The outcome of one logical request (a read, or a search with its pages)."""

    resources: list[dict] = field(default_factory=list)
    error: str | None = None  # why it failed, for people: never a URL, header or body
    status: int | None = None  # last HTTP status seen
    not_found: bool = False  # a read answered 404/410: no such resource
    pages: int = 0
    cap_hit: bool = False
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class _Failure(Exception):
    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason, self.status = reason, status


class _BlockAll(DefaultCookiePolicy):
    """No cookie is ever stored: one EHR's session must not ride along to the next call."""

    def set_ok(self, cookie, request):  # noqa: D401
        return False

    def return_ok(self, cookie, request):
        return False


# -- the client ----------------------------------------------------------------------------
class FhirClient:
    """A process-wide pooled HTTP client and worker pool for FHIR reads and searches."""

    def __init__(
        self,
        *,
        request_timeout: float = 2.5,
        connect_timeout: float = 1.0,
        max_workers: int = 16,
        pool_size: int = 16,
        retries: int = 2,
        backoff: float = 0.1,
        page_cap: int = 10,
        max_response_bytes: int = 20 * 1024 * 1024,
        verify: bool | str = True,
    ):
        self.request_timeout = float(request_timeout)
        self.connect_timeout = float(connect_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.page_cap = int(page_cap)
        self.max_response_bytes = int(max_response_bytes)
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies, no .netrc credentials, no CA bundle from the environment
        self.session.verify = verify if isinstance(verify, str) and verify else True
        self.session.cookies.set_policy(_BlockAll())
        self.session.headers.clear()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"})
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0, pool_block=False)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fhir")
        self.pid = os.getpid()

    @classmethod
    def from_config(cls, cfg: Mapping) -> "FhirClient":
        return cls(
            request_timeout=cfg.get("FHIR_REQUEST_TIMEOUT", 2.5),
            connect_timeout=cfg.get("FHIR_CONNECT_TIMEOUT", 1.0),
            max_workers=cfg.get("FHIR_MAX_WORKERS", 16),
            pool_size=cfg.get("FHIR_POOL_SIZE", 16),
            retries=cfg.get("FHIR_RETRIES", 2),
            backoff=cfg.get("FHIR_RETRY_BACKOFF", 0.1),
            page_cap=cfg.get("FHIR_PAGE_CAP", 10),
            max_response_bytes=cfg.get("FHIR_MAX_RESPONSE_BYTES", 20 * 1024 * 1024),
            verify=cfg.get("FHIR_CA_BUNDLE") or True,
        )

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.session.close()

    # -- one HTTP GET, with retries on 429/503 ---------------------------------------------
    def _get_json(self, url: str, token: str | None, deadline: float, fetch: Fetch) -> dict | None:
        """GET ``url`` and parse its JSON; None on 404/410. Raises _Failure."""
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.005:
                raise _Failure("no answer before the deadline")
            read_timeout = min(self.request_timeout, remaining)
            fetch.requests += 1
            try:
                resp = self.session.get(
                    url, headers=headers, timeout=(min(self.connect_timeout, read_timeout), read_timeout),
                    allow_redirects=False, stream=True,
                )
            except requests.exceptions.SSLError:
                raise _Failure("TLS certificate verification failed") from None
            except requests.exceptions.ConnectTimeout:
                raise _Failure("the FHIR server did not accept a connection in time") from None
            except requests.exceptions.Timeout:
                raise _Failure("no answer before the deadline" if time.monotonic() >= deadline - 0.01
                               else "the FHIR server did not answer in time") from None
            except requests.exceptions.ConnectionError:
                raise _Failure("the FHIR server could not be reached") from None
            except requests.exceptions.RequestException as exc:
                raise _Failure(f"request failed ({type(exc).__name__})") from None
            status = resp.status_code
            fetch.status = status
            # The body is read in full (bounded by size and deadline) so the connection goes back to
            # the pool; a body not read to its end closes the connection instead.
            raw, complete = b"", False
            try:
                raw = self._read_body(resp, deadline)
                complete = True
            except _Failure:
                if status < 300:
                    raise
            finally:
                if complete:
                    resp.raw.release_conn()
                else:
                    resp.close()
            if status in (429, 503) and attempt < self.retries:
                wait = self._retry_wait(resp, attempt)
                if time.monotonic() + wait < deadline - 0.05:
                    attempt += 1
                    fetch.retries += 1
                    time.sleep(wait)
                    continue
                raise _Failure(f"HTTP {status} from the FHIR server (no time left to retry)", status)
            if status in (404, 410):
                return None
            if 300 <= status < 400:
                raise _Failure(f"HTTP {status}: the FHIR server redirected (redirects are not followed)", status)
            if status == 401:
                raise _Failure("HTTP 401: the FHIR server refused the access token", status)
            if status == 403:
                raise _Failure("HTTP 403: the access token does not allow this read", status)
            if status >= 400:
                raise _Failure(f"HTTP {status} from the FHIR server", status)
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise _Failure("the FHIR server's answer was not valid JSON", status) from None
            if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
                raise _Failure("the FHIR server's answer was not a FHIR resource", status)
            return data

    def _retry_wait(self, resp: requests.Response, attempt: int) -> float:
        after = resp.headers.get("Retry-After", "")
        if after.strip().isdigit():
            return float(after.strip())
        return self.backoff * (2 ** attempt) * (1 + random.random() * 0.25)

    def _read_body(self, resp: requests.Response, deadline: float) -> bytes:
        """The body, read as it arrives (``read1``), so a server dripping bytes cannot outlast the deadline."""
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            raise _Failure("the FHIR server's answer was too large")
        raw = resp.raw
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise _Failure("no answer before the deadline")
            try:
                chunk = raw.read1(64 * 1024, decode_content=True)
            except requests.exceptions.RequestException:
                raise _Failure("the FHIR server's answer was cut off") from None
            except Exception as exc:  # urllib3 / socket errors: timeouts, resets, bad encodings
                timed_out = "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower()
                raise _Failure("no answer before the deadline" if timed_out
                               else "the FHIR server's answer was cut off") from None
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_response_bytes:
                raise _Failure("the FHIR server's answer was too large")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- reads and searches ----------------------------------------------------------------
    def read(self, base: str, rtype: str, rid: str, token: str | None, deadline: float) -> Fetch:
        from urllib.parse import quote

        fetch = Fetch()
        started = time.monotonic()
        try:
            data = self._get_json(f"{base}/{quote(rtype, safe='')}/{quote(rid, safe='')}", token, deadline, fetch)
            if data is None:
                fetch.not_found = True
            elif data.get("resourceType") == "OperationOutcome":
                raise _Failure("the FHIR server answered with an OperationOutcome", fetch.status)
            elif data.get("resourceType") != rtype:
                raise _Failure(f"the FHIR server answered with a {data.get('resourceType')}, not a {rtype}", fetch.status)
            else:
                fetch.resources = [data]
            fetch.pages = 1
        except _Failure as exc:
            fetch.error = exc.reason
        fetch.elapsed_ms = (time.monotonic() - started) * 1000
        return fetch

    def search(self, base: str, query: str, token: str | None, deadline: float) -> Fetch:
        """``{base}/{query}``, following ``next`` links (at most ``page_cap`` of them) under ``base``."""
        fetch = Fetch()
        started = time.monotonic()
        url = f"{base}/{query}"
        seen: set[str] = set()
        try:
            while True:
                seen.add(url)
                data = self._get_json(url, token, deadline, fetch)
                if data is None:
                    raise _Failure(f"HTTP {fetch.status} from the FHIR server", fetch.status)
                if data.get("resourceType") == "OperationOutcome":
                    raise _Failure("the FHIR server answered the search with an OperationOutcome", fetch.status)
                if data.get("resourceType") != "Bundle":
                    raise _Failure("the FHIR server's answer to a search was not a Bundle", fetch.status)
                fetch.pages += 1
                fetch.resources += _page_resources(data)
                nxt = _next_link(data)
                if not nxt:
                    break
                nxt = urljoin(url, nxt)
                if not under_base(nxt, base):
                    raise _Failure("a next link pointed outside fhirServer (not followed)", fetch.status)
                if nxt in seen:
                    raise _Failure("the FHIR server's next links loop", fetch.status)
                if fetch.pages > self.page_cap:
                    fetch.cap_hit = True
                    break
                url = nxt
        except _Failure as exc:
            fetch.error = exc.reason
        fetch.elapsed_ms = (time.monotonic() - started) * 1000
        return fetch


def _next_link(bundle: Mapping) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, Mapping) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _page_resources(bundle: Mapping) -> list[dict]:
    """Entries of a search page with their fullUrl; ``outcome`` entries are checked, not kept."""
    out = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), Mapping):
            continue
        res = entry["resource"]
        if not isinstance(res.get("resourceType"), str):
            continue
        if res["resourceType"] == "OperationOutcome":
            severities = {i.get("severity") for i in res.get("issue") or [] if isinstance(i, Mapping)}
            if severities & {"error", "fatal"}:
                raise _Failure("the FHIR server reported an error in the search results")
            continue  # warnings (e.g. an ignored search parameter)
        item = dict(res)
        if isinstance(entry.get("fullUrl"), str):
            item["__fullUrl"] = entry["fullUrl"]
        out.append(item)
    return out


# -- process-wide instance -----------------------------------------------------------------
_LOCK = threading.Lock()


def client_for(extensions: dict, cfg: Mapping) -> FhirClient:
    """The app's client, created on first use in this process (after a fork, a new one)."""
    with _LOCK:
        client = extensions.get("cds_fhir_client")
        if client is None or client.pid != os.getpid():
            client = FhirClient.from_config(cfg)
            extensions["cds_fhir_client"] = client
        return client


class _RedactUrls(logging.Filter):
    """urllib3 logs request lines at DEBUG; keep the resource type, drop ids and search values."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5 and isinstance(args[4], str):
            record.args = args[:4] + (_redact(args[4]),) + args[5:]
        return True


def _redact(path: str) -> str:
    bare = path.split("?", 1)[0]
    parts = bare.split("/")
    for i, part in enumerate(parts):
        if part[:1].isupper() and i + 1 < len(parts):
            return "/".join(parts[: i + 1]) + "/…"
    return bare + ("?…" if "?" in path else "")


logging.getLogger("urllib3.connectionpool").addFilter(_RedactUrls())
