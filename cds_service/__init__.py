"""Coverage Requirements Discovery (Da Vinci CRD) as a CDS Hooks service."""
from __future__ import annotations

import logging
from typing import Mapping

from flask import Flask

from . import auth, errors, hardening
from .auth import DEMO_CLIENTS
from .config import DEFAULTS, utc_now
from .library import cached_library
from .sansio.fhir_models import warm_models

__all__ = ["create_app"]


def create_app(config: Mapping | None = None) -> Flask:
    """Application factory: defaults, then ``CDS_*`` environment, then ``config``."""
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    app.config["CLOCK"] = utc_now
    app.config.from_prefixed_env("CDS")
    if config:
        app.config.update({k: v for k, v in config.items() if k.isupper()})
    # Fails fast, naming the file and place, when a policy document is invalid.
    app.extensions["cds_library"] = cached_library(app.config["POLICY_DIR"], app.config["EXTRA_POLICY_FILES"])
    warm_models()  # import the FHIR models now, not in the first prescriber's request
    app.json.sort_keys = False
    if app.config["TRUSTED_CLIENTS"] is None:
        app.config["TRUSTED_CLIENTS"] = DEMO_CLIENTS
    errors.register(app)
    # Imported here, not at the top: `cds-service serve` picks the metrics mode before this import.
    from . import decisions, metrics

    # Metrics first: its timer starts before authentication can answer (it reads nothing else).
    cds_metrics = metrics.init_app(app)
    # Decision records: SQLite in the instance folder unless DATABASE_URL says otherwise.
    app.extensions["cds_decisions"] = decisions.init_app(app, cds_metrics)
    auth.init_app(app)  # first: nothing of an unauthenticated request is read
    hardening.init_app(app)

    from .api import bp as api_bp
    from .feedback import bp as feedback_bp
    from .hooks import bp as hooks_bp
    from .openapi import bp as openapi_bp
    from .questionnaires import bp as questionnaire_bp

    app.register_blueprint(hooks_bp)
    app.register_blueprint(feedback_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(questionnaire_bp)
    app.register_blueprint(openapi_bp)
    from . import console

    console.init_app(app)  # the web console at /console (its own login; CONSOLE_ENABLED)
    logging.getLogger("cds_service").setLevel(logging.INFO)
    return app
