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
    # Python's garbage-collector generation thresholds in served workers. A hook request allocates
    # 10^4–10^6 short-lived objects (its parsed JSON); the interpreter's default (700, 10, 10) would
    # run hundreds of collections per request, each scanning the policy library again. With these,
    # and the library frozen out of collection after loading (gc.freeze), parsing and evaluating a
    # 100-Observation request costs about half the CPU (bench/RESULTS.md). None: Python's defaults.
    "GC_THRESHOLDS": [50000, 20, 100],
    # Decision records (hook calls, per-order decisions, card feedback). None: SQLite file
    # decisions.sqlite3 in the instance folder (in memory for TESTING apps); the DATABASE_URL
    # environment variable is read too. PostgreSQL: postgresql://user:password@host:5432/dbname
    "DATABASE_URL": None,
    # Instance folder (SQLite file, shutdown spool); None: Flask's instance folder (./instance).
    "INSTANCE_DIR": None,
    # Records waiting to be stored, per process; when full, the oldest is dropped and counted.
    "DECISION_QUEUE_SIZE": 10000,
    # Records written per transaction.
    "DECISION_BATCH_SIZE": 200,
    # How long the writer waits for more records before writing a batch that is not full (seconds):
    # one transaction per 50 ms rather than per hook call (a record alone costs ~1.7 ms of the writer
    # thread's CPU to store, one of 50 ~0.4 ms). A flush or shutdown does not wait for it.
    "DECISION_LINGER_SECONDS": 0.05,
    # Longest wait between retries while the store is down (seconds).
    "DECISION_RETRY_MAX_SECONDS": 5.0,
    # How long shutdown waits for the queue to drain before spooling the rest (seconds).
    "DECISION_FLUSH_TIMEOUT_SECONDS": 10.0,
    # Where records that could not be stored at shutdown are spooled; None: <instance>/decision-spool.
    "DECISION_SPOOL_DIR": None,
    # Client authentication (CDS Hooks JWT). On by default; CDS_AUTH_REQUIRED=0 for local development.
    "AUTH_REQUIRED": True,
    # Discovery (GET /cds-services) may be called without a token.
    "AUTH_DISCOVERY_OPEN": True,
    # Clock skew allowed on exp/nbf/iat (seconds).
    "AUTH_LEEWAY_SECONDS": 60,
    # Trusted clients: iss, keys (jwks inline or file in cds_service/trust, jwks_url, jku_allowlist),
    # algorithms (ES384, RS384; allow_rs256 per client), tenant, fhir_servers. Demo: sandbox and Inferno.
    "TRUSTED_CLIENTS": None,
    # -- The service's own FHIR queries (contract §4.2) ------------------------------------------
    # FHIR servers the service may query: base URLs, or {"url": ..., "token_required": true}. Empty by
    # default: a request that lacks prefetch keys and names any fhirServer gets 400, and nothing is
    # sent. A trusted client's own fhir_servers (TRUSTED_CLIENTS) are allowed for that client too.
    # Development with a local test EHR: CDS_FHIR_ALLOWLIST='["http://127.0.0.1:8090/fhir"]'.
    "FHIR_ALLOWLIST": [],
    # Allowlisted servers that must not be queried without fhirAuthorization.access_token (→ 412).
    "FHIR_TOKEN_REQUIRED": False,
    # Whole-request deadline (seconds): past it the service answers with what it has.
    "FHIR_DEADLINE_SECONDS": 3.0,
    # Part of the deadline kept for evaluating and answering after the data gathering stops.
    "FHIR_EVALUATION_RESERVE_SECONDS": 0.15,
    # Per HTTP request: read timeout and connect timeout (each also capped by the deadline).
    "FHIR_REQUEST_TIMEOUT": 2.5,
    "FHIR_CONNECT_TIMEOUT": 1.0,
    # Bundle `next` pages followed per query (contract §4.2: at most 10); a query that hits it is traced.
    "FHIR_PAGE_CAP": 10,
    # Reference reads per request (Coverage.payor, Observation.performer, ...).
    "FHIR_MAX_READS": 100,
    # Retries on 429/503 (Retry-After honoured, else exponential backoff from this many seconds).
    "FHIR_RETRIES": 2,
    "FHIR_RETRY_BACKOFF": 0.1,
    # Concurrent FHIR requests per process, and pooled connections per FHIR host.
    "FHIR_MAX_WORKERS": 16,
    "FHIR_POOL_SIZE": 16,
    # Largest FHIR response accepted (bytes).
    "FHIR_MAX_RESPONSE_BYTES": 20 * 1024 * 1024,
    # TLS: certificates are always verified; a CA bundle path for a private CA (None: the system's).
    "FHIR_CA_BUNDLE": None,
    # Public base URL of this service (source links, questionnaire endpoints); None = from the request.
    "PUBLIC_BASE_URL": None,
    # -- Web console (/console): policies, decisions, try-it, dashboard ----------------------------
    "CONSOLE_ENABLED": True,
    # The admin token the console's login form asks for (CDS_CONSOLE_TOKEN); None: no login possible.
    "CONSOLE_TOKEN": None,
    # No login at all: honoured only in development mode (DEVELOPMENT, `cds-service serve --dev`, or tests).
    "CONSOLE_OPEN": False,
    # A console login lasts this long (hours).
    "CONSOLE_SESSION_HOURS": 8,
    # Hook requests offered on the console's try-it page (index.json per folder); None: the bundled fhir_examples.
    "CONSOLE_EXAMPLES_DIR": None,
    # Development mode (set by `cds-service serve --dev`).
    "DEVELOPMENT": False,
    # Signs the console's session cookie (CDS_SECRET_KEY); None: a random key per start (logins end at restart).
    "SECRET_KEY": None,
}


def utc_now() -> datetime:
    """The default clock; tests and replays pass their own as config ``CLOCK``."""
    return datetime.now(timezone.utc)
