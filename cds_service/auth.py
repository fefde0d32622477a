"""Authenticating CDS clients: the EHR's signed JWT (CDS Hooks 2.0 "Trusting CDS Clients").

Each hook and feedback call carries ``Authorization: Bearer <JWT>``. The token is
verified with PyJWT against the keys of a *trusted client* from configuration:
issuer, keys (inline JWKS, a JWKS URL, or an allowlisted ``jku``), allowed
algorithms (ES384 and RS384; RS256 only when enabled for that client), optional
tenant, and the FHIR servers the client may send. ``aud`` must be this
endpoint's public URL; ``jti`` may be used once within its lifetime (the replay cache: in the
shared store when the app wires it, else in this process; see ``cds_service.replay``).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import jwt
import requests
from jwt import PyJWK

from .replay import MemoryReplayCache, ReplayCache, StoreReplayCache

log = logging.getLogger("cds_service.auth")

DEFAULT_ALGORITHMS = ("ES384", "RS384")
ASYMMETRIC = {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
TRUST_DIR = Path(__file__).resolve().parent / "trust"
REPLAY_WINDOW_SECONDS = 15 * 60


class AuthError(Exception):
    """Refused; the reason goes to the log, never to the client."""


@dataclass
class TrustedClient:
    iss: str
    jwks: dict | None = None  # inline JWKS
    jwks_url: str | None = None
    jku_allowlist: tuple = ()
    algorithms: tuple = DEFAULT_ALGORITHMS
    allow_rs256: bool = False
    tenant: str | None = None
    fhir_servers: tuple = ()
    name: str = ""

    @classmethod
    def from_config(cls, data: Mapping) -> "TrustedClient":
        jwks = data.get("jwks")
        if isinstance(jwks, str):  # a file path, relative to the bundled trust folder if not absolute
            path = Path(jwks) if Path(jwks).is_absolute() else TRUST_DIR / jwks
            jwks = json.loads(path.read_text(encoding="utf-8"))
        algorithms = tuple(data.get("algorithms") or DEFAULT_ALGORITHMS)
        if data.get("allow_rs256") and "RS256" not in algorithms:
            algorithms += ("RS256",)
        bad = [a for a in algorithms if a not in ASYMMETRIC or (a == "RS256" and not data.get("allow_rs256"))]
        if bad:
            raise ValueError(f"trusted client {data.get('iss')}: algorithms not allowed: {bad}")
        return cls(
            iss=data["iss"], jwks=jwks, jwks_url=data.get("jwks_url"),
            jku_allowlist=tuple(data.get("jku_allowlist") or ()), algorithms=algorithms,
            allow_rs256=bool(data.get("allow_rs256")), tenant=data.get("tenant"),
            fhir_servers=tuple(s.rstrip("/") for s in data.get("fhir_servers") or ()),
            name=data.get("name") or data["iss"],
        )


@dataclass
class _KeySet:
    keys: dict = field(default_factory=dict)  # kid -> (PyJWK, the JWK's declared alg or None)
    fetched_at: float = 0.0


class Verifier:
    """Verifies client JWTs; JWKS cached per source, refreshed once on an unknown kid (rate-limited).

    ``replay`` remembers accepted token ids: this process's memory unless given; the app passes
    the shared store's cache.
    """

    def __init__(self, clients: list[TrustedClient], *, fetch: Callable[[str], dict] | None = None,
                 clock: Callable[[], float] = time.time, leeway: int = 60, refresh_interval: float = 60.0,
                 replay: ReplayCache | None = None):
        self.clients = {c.iss: c for c in clients}
        self.fetch = fetch or _http_fetch
        self.clock = clock
        self.leeway = leeway
        self.refresh_interval = refresh_interval
        self._keysets: dict[str, _KeySet] = {}
        self.replay = replay if replay is not None else MemoryReplayCache()
        self._lock = threading.Lock()

    def verify(self, token: str, audience: str | list[str]) -> tuple[TrustedClient, dict]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from exc
        alg = header.get("alg")
        client = self.clients.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if client is None:
            raise AuthError("unknown issuer")
        if alg not in client.algorithms:
            raise AuthError(f"algorithm {alg!r} not allowed for this client")
        key = self._key(client, header)
        try:
            claims = jwt.decode(
                token, key=key.key, algorithms=[alg], audience=audience, issuer=client.iss, leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}: {exc}") from exc
        now = self.clock()
        if claims["iat"] > now + self.leeway:
            raise AuthError("iat in the future")
        if client.tenant is not None and claims.get("tenant") != client.tenant:
            raise AuthError("tenant mismatch")
        self._check_replay(client.iss, str(claims["jti"]), float(claims["exp"]), now)
        return client, claims

    def _check_replay(self, iss: str, jti: str, exp: float, now: float) -> None:
        # Remembered until the token expires, and at least REPLAY_WINDOW_SECONDS.
        if self.replay.seen(iss, jti, max(exp, now + REPLAY_WINDOW_SECONDS), now):
            raise AuthError("replayed jti")

    def _sources(self, client: TrustedClient, header: Mapping) -> list[str]:
        jku = header.get("jku")
        if jku is not None:
            if jku not in client.jku_allowlist:
                raise AuthError("jku not allowlisted")
            return [jku]
        sources = []
        if client.jwks is not None:
            sources.append(f"inline:{client.iss}")
        if client.jwks_url:
            sources.append(client.jwks_url)
        for url in client.jku_allowlist:
            sources.append(url)
        return sources

    def _key(self, client: TrustedClient, header: Mapping) -> PyJWK:
        kid = header.get("kid")
        sources = self._sources(client, header)
        for source in sources:
            keyset = self._keyset(client, source)
            if kid in keyset.keys:
                return self._checked(keyset.keys[kid], header)
            if kid is None and len(keyset.keys) == 1:
                return self._checked(next(iter(keyset.keys.values())), header)
        for source in sources:  # unknown kid: refresh remote sets once, rate-limited
            if source.startswith("inline:"):
                continue
            keyset = self._keyset(client, source, refresh=True)
            if kid in keyset.keys:
                return self._checked(keyset.keys[kid], header)
        raise AuthError("no key for kid")

    @staticmethod
    def _checked(entry: tuple, header: Mapping) -> PyJWK:
        # Algorithm confusion: the key's own type and declared alg must agree with the header's alg.
        key, declared = entry
        alg = header.get("alg")
        kty = key.key_type
        if (alg.startswith("ES") and kty != "EC") or (alg[:2] in ("RS", "PS") and kty != "RSA"):
            raise AuthError("key type does not match alg")
        if declared and declared != alg:
            raise AuthError("key alg does not match header alg")
        return key

    def _keyset(self, client: TrustedClient, source: str, refresh: bool = False) -> _KeySet:
        with self._lock:
            cached = self._keysets.get(source)
        now = self.clock()
        if cached and not refresh:
            return cached
        if cached and refresh and now - cached.fetched_at < self.refresh_interval:
            return cached
        data = client.jwks if source.startswith("inline:") else self._fetch(source)
        keys = {}
        for jwk in (data or {}).get("keys", []):
            if not isinstance(jwk, Mapping) or jwk.get("kty") not in ("EC", "RSA") or "d" in jwk:
                continue  # only public asymmetric keys are trusted
            try:
                keys[jwk.get("kid")] = (PyJWK(dict(jwk)), jwk.get("alg"))
            except jwt.PyJWTError:
                continue
        keyset = _KeySet(keys, now)
        with self._lock:
            self._keysets[source] = keyset
        return keyset

    def _fetch(self, url: str) -> dict:
        try:
            return self.fetch(url)
        except Exception as exc:  # noqa: BLE001
            log.warning("JWKS fetch failed for %s: %s", url, type(exc).__name__)
            return {}


def _http_fetch(url: str) -> dict:
    resp = requests.get(url, timeout=3, headers={"Accept": "application/json"})
    resp.raise_for_status()
    return resp.json()


def load_clients(config: list[Mapping]) -> list[TrustedClient]:
    return [TrustedClient.from_config(c) for c in config]


DEMO_CLIENTS = [
    {
        "name": "CDS Hooks sandbox",
        "iss": "https://sandbox.cds-hooks.org",
        "jwks": "sandbox-jwks.json",
        "jku_allowlist": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"],
        "fhir_servers": ["https://launch.smarthealthit.org/v/r4/fhir"],
    },
    {
        "name": "Inferno Da Vinci CRD test kit",
        "iss": "https://inferno.healthit.gov",
        "jwks": "inferno-jwks.json",
        "fhir_servers": [],
    },
]


# -- Flask wiring ---------------------------------------------------------------
def init_app(app) -> None:
    """Require a verified client JWT on hook and feedback calls (on by default)."""
    from flask import g, request

    from .errors import outcome_response

    clients = load_clients(app.config["TRUSTED_CLIENTS"])
    # Token ids go to the decision-record store, shared by every worker and instance using it.
    recorder = app.extensions.get("cds_decisions")
    replay = StoreReplayCache(recorder.store, metrics=app.extensions.get("cds_metrics")) if recorder else None
    verifier = Verifier(clients, leeway=int(app.config["AUTH_LEEWAY_SECONDS"]), replay=replay)
    app.extensions["cds_auth"] = verifier
    if not app.config["AUTH_REQUIRED"]:
        log.warning("CDS client authentication is OFF (AUTH_REQUIRED=false): development and tests only")

    @app.before_request
    def authenticate():
        g.cds_client = None
        if not app.config["AUTH_REQUIRED"] or not request.path.startswith("/cds-services"):
            return None
        if request.method == "OPTIONS":
            return None  # CORS preflight
        if request.path.rstrip("/") == "/cds-services" and app.config["AUTH_DISCOVERY_OPEN"]:
            return None
        header = request.headers.get("Authorization", "")
        reason = None
        if not header.startswith("Bearer ") or not header[7:].strip():
            reason = "missing bearer token"
        else:
            base = (app.config["PUBLIC_BASE_URL"] or request.host_url).rstrip("/")
            path = request.path.rstrip("/")
            audiences = [base + path]
            if path.endswith("/feedback"):
                audiences.append(base + path[: -len("/feedback")])
            try:
                client, claims = verifier.verify(header[7:].strip(), audiences)
                g.cds_client = client
                g.cds_tenant = claims.get("tenant")
                return None
            except AuthError as exc:
                reason = str(exc)
        log.warning("refused client token on %s %s: %s", request.method, request.path, reason)
        resp = outcome_response(401, "authentication failed", "login")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="cds-services", error="invalid_token"'
        return resp
