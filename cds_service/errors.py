"""Errors as FHIR OperationOutcomes with the right HTTP status — never a stack trace."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                412: "not-found", 413: "too-costly", 415: "not-supported", 422: "processing"}


def operation_outcome(diagnostics: str, code: str = "invalid", severity: str = "error",
                      expression: str | None = None) -> dict:
    issue = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_response(status: int, diagnostics: str, code: str | None = None, expression: str | None = None):
    body = operation_outcome(diagnostics, code or _ISSUE_CODES.get(status, "exception"), expression=expression)
    response = jsonify(body)
    response.status_code = status
    return response


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return outcome_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # pragma: no cover - a bug; still answer in FHIR terms
        log.exception("unhandled error: %s", type(exc).__name__)
        return outcome_response(500, "internal error; the incident was logged", "exception")
