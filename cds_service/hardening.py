"""Request hardening at the edge: CORS for browser EHRs, JSON only, bounded size and nesting.

Body size is Flask's MAX_CONTENT_LENGTH (→ 413). Nesting is checked before parsing so a
pathological body can never exhaust the parser's recursion (→ 400, not 500).
"""
from __future__ import annotations

import re
from itertools import accumulate

from flask import Flask, request
from flask_cors import CORS

from .errors import outcome_response

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # unrolled: one pass over plain runs


_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def _bracket_depth(brackets: bytes) -> int:
    return max(accumulate((1 if b in b"[{" else -1 for b in brackets), initial=0))


def json_depth(raw: bytes) -> int:
    """Maximum nesting depth of a JSON text (strings skipped; malformed text is the parser's job)."""
    return _bracket_depth(_BRACKET_ONLY(_STRING.sub(b'""', raw)))


def _BRACKET_ONLY(raw: bytes) -> bytes:
    return raw.translate(None, _NOT_BRACKETS)


_PARENS = bytes.maketrans(b"[{]}", b"(())")


def _within(brackets: bytes, limit: int) -> bool:
    """Whether balanced brackets nest at most ``limit`` deep, at C speed: each pass of
    ``replace`` removes the innermost level (the empty pairs) of every nest, so a text of
    depth d is empty after exactly d passes. False also when unbalanced (the exact count decides)."""
    text = brackets.translate(_PARENS)
    for _ in range(limit):
        if not text:
            return True
        shorter = text.replace(b"()", b"")
        if len(shorter) == len(text):
            return False  # unbalanced
        text = shorter
    return not text


def too_deep(raw: bytes, limit: int) -> bool:
    """Fast path first: counting brackets inside strings too can only over-estimate the depth."""
    if _within(_BRACKET_ONLY(raw), limit):
        return False
    return json_depth(raw) > limit


def init_app(app: Flask) -> None:
    CORS(
        app,
        resources={r"/cds-services*": {"origins": app.config["CORS_ORIGINS"]},
                   r"/fhir/*": {"origins": app.config["CORS_ORIGINS"]}},
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )

    @app.before_request
    def guard_body():
        if request.method != "POST" or not request.path.startswith("/cds-services"):
            return None
        if not request.is_json:
            return outcome_response(415, "send the request as application/json", "not-supported")
        raw = request.get_data(cache=True)
        limit = app.config["MAX_JSON_DEPTH"]
        if raw and too_deep(raw, limit):
            return outcome_response(400, f"JSON nesting deeper than {limit} levels", "too-costly")
        return None
