"""Configuration defaults; override with ``create_app(config)`` or ``CDS_*`` environment variables.

Environment values are parsed as JSON when they can be (``CDS_TIMEZONE=UTC``,
``CDS_EXTRA_POLICY_FILES='["a.yaml"]'``), as Flask's ``from_prefixed_env`` does.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_POLICIES = PACKAGE_DIR.parent / "policies"

DEFAULTS = {
    # Where the policy library lives: policy documents, value sets, payer registry, schemas.
    "POLICY_DIR": str(BUNDLED_POLICIES),
    # Extra policy revision files loaded beside the library (e.g. a payer's local revision).
    "EXTRA_POLICY_FILES": [],
    # {base} of the data contract: code systems, Questionnaire canonicals.
    "CODE_SYSTEM_BASE": "http://example.org/fhir/cds-coverage",
    # Coverage.payor identifier system matched against the payer registry.
    "PAYER_ID_SYSTEM": "http://example.org/payer-id",
    # Time zone of "today" (T0 when authoredOn is absent, coverage-information date).
    "TIMEZONE": "UTC",
    # CRD versions offered in discovery (davinci-crd.version, major.minor as CRD asks).
    "CRD_VERSIONS": ["2.0", "2.2"],
    # Procedure codes governed by a procedure-specific policy instead of MC.CP.MP.31 (contract §3.3).
    "PROCEDURE_SPECIFIC_CODES": [],
    # Origins allowed to call from a browser (CORS): "*" or a list of origins.
    "CORS_ORIGINS": "*",
    # Deepest JSON nesting accepted in a request body.
    "MAX_JSON_DEPTH": 64,
    # Largest request body accepted (bytes).
    "MAX_CONTENT_LENGTH": 5 * 1024 * 1024,
    # Production server (cds-service serve): worker processes (None: 2 per core) and threads per worker.
    "WORKERS": None,
    "THREADS": 4,
    # Client authentication (CDS Hooks JWT). On by default; CDS_AUTH_REQUIRED=0 for local development.
    "AUTH_REQUIRED": True,
    # Discovery (GET /cds-services) may be called without a token.
    "AUTH_DISCOVERY_OPEN": True,
    # Clock skew allowed on exp/nbf/iat (seconds).
    "AUTH_LEEWAY_SECONDS": 60,
    # Trusted clients: iss, keys (jwks inline or file in cds_service/trust, jwks_url, jku_allowlist),
    # algorithms (ES384, RS384; allow_rs256 per client), tenant, fhir_servers. Demo: sandbox and Inferno.
    "TRUSTED_CLIENTS": None,
    # Public base URL of this service (source links, questionnaire endpoints); None = from the request.
    "PUBLIC_BASE_URL": None,
}


def utc_now() -> datetime:
    """The default clock; tests and replays pass their own as config ``CLOCK``."""
    return datetime.now(timezone.utc)
