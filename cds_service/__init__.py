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
from .traces import TraceBuffer

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
    app.extensions["cds_decisions"] = TraceBuffer()
    warm_models()  # import the FHIR models now, not in the first prescriber's request
    app.json.sort_keys = False
    if app.config["TRUSTED_CLIENTS"] is None:
        app.config["TRUSTED_CLIENTS"] = DEMO_CLIENTS
    errors.register(app)
    auth.init_app(app)  # first: nothing of an unauthenticated request is read
    hardening.init_app(app)

    from .hooks import bp as hooks_bp
    from .questionnaires import bp as questionnaire_bp

    app.register_blueprint(hooks_bp)
    app.register_blueprint(questionnaire_bp)
    logging.getLogger("cds_service").setLevel(logging.INFO)
    return app
