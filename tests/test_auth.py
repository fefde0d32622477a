"""Client authentication with real signed tokens (CDS Hooks 2.0 "Trusting CDS Clients")."""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service import create_app
from cds_service.auth import AuthError, TrustedClient, Verifier, load_clients, DEMO_CLIENTS
from conftest import EXAMPLES, load_json

ISS = "https://ehr.example.org"
HOOK_URL = "http://localhost/cds-services/order-sign-crd"


def ec_key():
    return ec.generate_private_key(ec.SECP384R1())


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private, kid, alg):
    algo = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
    jwk = json.loads(algo.to_jwk(private.public_key()))
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


EC_PRIVATE, RSA_PRIVATE, OTHER_EC = ec_key(), rsa_key(), ec_key()
JWKS = {"keys": [public_jwk(EC_PRIVATE, "ec-1", "ES384"), public_jwk(RSA_PRIVATE, "rsa-1", "RS384")]}


def claims(**over):
    now = int(time.time())
    base = {"iss": ISS, "aud": HOOK_URL, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def token(private=EC_PRIVATE, alg="ES384", kid="ec-1", headers=None, **over):
    h = {"kid": kid, "typ": "JWT", **(headers or {})}
    return jwt.encode(claims(**over), private, algorithm=alg, headers=h)


@pytest.fixture
def secure_app():
    return create_app({
        "AUTH_REQUIRED": True,
        "TRUSTED_CLIENTS": [{"iss": ISS, "jwks": JWKS, "jku_allowlist": ["https://keys.example.org/jwks.json"]}],
    })


@pytest.fixture
def secure_client(secure_app):
    return secure_app.test_client()


@pytest.fixture
def body():
    return load_json(EXAMPLES / "cp-mp-190-2023/01-adult-rest-spo2-88-e1390.json")


def post(client, body, tok=None, headers=None):
    h = dict(headers or {})
    if tok is not None:
        h["Authorization"] = f"Bearer {tok}"
    return client.post("/cds-services/order-sign-crd", json=body, headers=h)


@pytest.mark.parametrize("private,alg,kid", [(EC_PRIVATE, "ES384", "ec-1"), (RSA_PRIVATE, "RS384", "rsa-1")])
def test_valid_tokens_are_accepted(secure_client, body, private, alg, kid):
    resp = post(secure_client, body, token(private, alg, kid))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["cards"][0]["summary"].startswith("SUPPORTED")


def _unsigned(alg="none"):
    header = base64.urlsafe_b64encode(json.dumps({"alg": alg, "typ": "JWT", "kid": "ec-1"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    return f"{header.decode()}.{payload.decode()}."


def _hs256_with_public_key():
    pem = EC_PRIVATE.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "ec-1"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac

    signing_input = header + b"." + payload
    sig = base64.urlsafe_b64encode(hmac.new(pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + sig).decode()


ATTACKS = {
    "expired": lambda: token(iat=int(time.time()) - 900, exp=int(time.time()) - 600),
    "not-yet-valid": lambda: token(nbf=int(time.time()) + 600),
    "iat-in-future": lambda: token(iat=int(time.time()) + 600, exp=int(time.time()) + 900),
    "wrong-aud": lambda: token(aud="https://other.example.org/cds-services/order-sign-crd"),
    "unknown-iss": lambda: token(iss="https://evil.example.org"),
    "wrong-key": lambda: token(private=OTHER_EC),
    "alg-none": lambda: _unsigned("none"),
    "hs256-public-key-as-secret": _hs256_with_public_key,
    "jku-not-allowlisted": lambda: token(headers={"jku": "https://evil.example.org/jwks.json"}),
    "rs256-not-enabled": lambda: token(RSA_PRIVATE, "RS256", "rsa-1"),
    "es384-key-under-rs384-kid": lambda: token(EC_PRIVATE, "ES384", "rsa-1"),
    "missing-jti": lambda: token(jti=None),
    "garbage": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_are_refused_with_401_and_no_detail(secure_client, body, name, caplog):
    resp = post(secure_client, body, ATTACKS[name]())
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.get_json()["issue"][0]["diagnostics"] == "authentication failed"
    assert "refused client token" in caplog.text


def test_missing_authorization_is_401(secure_client, body):
    resp = post(secure_client, body)
    assert resp.status_code == 401 and "WWW-Authenticate" in resp.headers


def test_replayed_jti_is_refused(secure_client, body):
    tok = token()
    assert post(secure_client, body, tok).status_code == 200
    assert post(secure_client, body, tok).status_code == 401


def test_discovery_is_open_by_default_and_can_be_closed(secure_client, body):
    assert secure_client.get("/cds-services").status_code == 200
    closed = create_app({"AUTH_REQUIRED": True, "AUTH_DISCOVERY_OPEN": False,
                         "TRUSTED_CLIENTS": [{"iss": ISS, "jwks": JWKS}]}).test_client()
    assert closed.get("/cds-services").status_code == 401


def test_auth_is_on_by_default(monkeypatch, body):
    monkeypatch.delenv("CDS_AUTH_REQUIRED", raising=False)
    app = create_app()
    assert app.config["AUTH_REQUIRED"] is True
    assert post(app.test_client(), body).status_code == 401


def test_tenant_must_match_when_configured(body):
    app = create_app({"AUTH_REQUIRED": True, "TRUSTED_CLIENTS": [{"iss": ISS, "jwks": JWKS, "tenant": "t1"}]})
    client = app.test_client()
    assert post(client, body, token(tenant="t2")).status_code == 401
    assert post(client, body, token(tenant="t1")).status_code == 200


def test_rs256_accepted_only_when_enabled_for_the_client(body):
    jwks = {"keys": [public_jwk(RSA_PRIVATE, "rsa-256", "RS256")]}
    app = create_app({"AUTH_REQUIRED": True, "TRUSTED_CLIENTS": [{"iss": ISS, "jwks": jwks, "allow_rs256": True}]})
    assert post(app.test_client(), body, token(RSA_PRIVATE, "RS256", "rsa-256")).status_code == 200


def test_hmac_algorithms_cannot_be_configured():
    with pytest.raises(ValueError):
        TrustedClient.from_config({"iss": ISS, "jwks": JWKS, "algorithms": ["HS256"]})


def test_bundled_sandbox_and_inferno_keys_load_and_foreign_signatures_are_refused():
    clients = load_clients(DEMO_CLIENTS)
    verifier = Verifier(clients)
    for client, kid, alg in [(clients[0], "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f", "ES384"),
                             (clients[1], "4b49a739d1eb115b3225f4cf9beb6d1b", "ES384"),
                             (clients[1], "b41528b6f37a9500edb8a905a595bdd7", "RS384")]:
        keyset = verifier._keyset(client, f"inline:{client.iss}")
        assert kid in keyset.keys
        forged_key = OTHER_EC if alg == "ES384" else rsa_key()
        forged = jwt.encode(claims(iss=client.iss), forged_key, algorithm=alg, headers={"kid": kid})
        with pytest.raises(AuthError):
            verifier.verify(forged, HOOK_URL)


class _JwksHandler(BaseHTTPRequestHandler):
    jwks: dict = {}
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        data = json.dumps(type(self).jwks).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def jwks_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", _JwksHandler
    server.shutdown()


def test_jwks_url_is_fetched_cached_and_refreshed_once_on_unknown_kid(jwks_server, body):
    url, handler = jwks_server
    handler.jwks, handler.hits = {"keys": [public_jwk(EC_PRIVATE, "ec-1", "ES384")]}, 0
    verifier = Verifier([TrustedClient(iss=ISS, jwks_url=url)], refresh_interval=0)
    verifier.verify(token(), HOOK_URL)
    verifier.verify(token(), HOOK_URL)
    assert handler.hits == 1  # cached
    rotated = ec_key()
    handler.jwks = {"keys": [public_jwk(rotated, "ec-2", "ES384")]}
    verifier.verify(token(rotated, kid="ec-2"), HOOK_URL)
    assert handler.hits == 2  # refreshed on the unknown kid
    with pytest.raises(AuthError):
        verifier.verify(token(kid="nope"), HOOK_URL)


def test_unknown_kid_refresh_is_rate_limited(jwks_server):
    url, handler = jwks_server
    handler.jwks, handler.hits = {"keys": [public_jwk(EC_PRIVATE, "ec-1", "ES384")]}, 0
    verifier = Verifier([TrustedClient(iss=ISS, jwks_url=url)], refresh_interval=3600)
    verifier.verify(token(), HOOK_URL)
    for _ in range(5):
        with pytest.raises(AuthError):
            verifier.verify(token(kid="unknown"), HOOK_URL)
    assert handler.hits == 1


def test_allowlisted_jku_is_used(jwks_server):
    url, handler = jwks_server
    handler.jwks = {"keys": [public_jwk(EC_PRIVATE, "ec-1", "ES384")]}
    verifier = Verifier([TrustedClient(iss=ISS, jku_allowlist=(url,))])
    verifier.verify(token(headers={"jku": url}), HOOK_URL)
