"""JSON Schema validation of CDS Hooks requests (request envelope and hook context)."""
from __future__ import annotations

import json
from functools import lru_cache

from jsonschema import Draft202012Validator

from .config import PACKAGE_DIR

SCHEMAS = PACKAGE_DIR / "schemas"
CONTEXT_SCHEMAS = {
    hook: f"context-{hook}.schema.json"
    for hook in ("order-sign", "order-select", "order-dispatch", "appointment-book", "encounter-start", "encounter-discharge")
}


@lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    with open(SCHEMAS / name, encoding="utf-8") as fh:
        schema = json.load(fh)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _first_error(validator: Draft202012Validator, data: object, prefix: str) -> tuple[str, str] | None:
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return None
    e = errors[0]
    path = ".".join(str(p) for p in e.absolute_path)
    where = f"{prefix}.{path}" if prefix and path else (prefix or path or "(request)")
    message = e.message if len(e.message) < 300 else e.message[:300] + "…"
    return where, f"{where}: {message}"


def request_problem(body: object, hook: str) -> tuple[str, str] | None:
    """(expression, message) of the first problem, or None for a valid request of this hook."""
    problem = _first_error(_validator("hook-request.schema.json"), body, "")
    if problem:
        return problem
    if body.get("hook") != hook:
        return "hook", f"hook: this service handles '{hook}', the request says '{body.get('hook')}'"
    return _first_error(_validator(CONTEXT_SCHEMAS[hook]), body["context"], "context")
