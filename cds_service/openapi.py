"""OpenAPI 3.1 description of every endpoint, served at /openapi.json.

A test compares it with the application's URL map, so it cannot drift from the code.
"""
from __future__ import annotations

import json
from functools import lru_cache

from flask import Blueprint, jsonify

from .config import PACKAGE_DIR

bp = Blueprint("openapi", __name__)

OUTCOME = {"$ref": "#/components/schemas/OperationOutcome"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {400: "Invalid request", 401: "Client authentication failed", 404: "Not found",
            412: "Needed data missing and no FHIR server to query", 413: "Body too large",
            415: "Not JSON"}
    return {str(c): _json(OUTCOME, text[c]) for c in codes}


@lru_cache(maxsize=1)
def _hook_request_schema() -> dict:
    with open(PACKAGE_DIR / "schemas" / "hook-request.schema.json", encoding="utf-8") as fh:
        schema = json.load(fh)
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def spec() -> dict:
    object_schema = {"type": "object"}
    service_id = {"name": "service_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CDS Coverage Requirements Discovery service",
            "version": "0.1.0",
            "description": "CDS Hooks 2.0.1 / Da Vinci CRD service: payer medical-necessity policies at order time.",
        },
        "paths": {
            "/cds-services": {"get": {
                "summary": "Discovery", "operationId": "discovery",
                "responses": {"200": _json({"type": "object", "required": ["services"],
                                            "properties": {"services": {"type": "array"}}}, "CDS services")}}},
            "/cds-services/{service_id}": {"post": {
                "summary": "Call a CDS service (hook request)", "operationId": "callService",
                "parameters": [service_id],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _hook_request_schema()}}},
                "responses": {"200": _json({"type": "object", "required": ["cards"],
                                            "properties": {"cards": {"type": "array"}, "systemActions": {"type": "array"}}},
                                           "Cards and coverage-information systemActions"),
                              **_errors(400, 401, 404, 412, 413, 415)}}},
            "/cds-services/{service_id}/feedback": {"post": {
                "summary": "Feedback on cards (CDS Hooks 2.0)", "operationId": "feedback",
                "parameters": [service_id],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["feedback"],
                    "properties": {"feedback": {"type": "array", "items": {
                        "type": "object", "required": ["card", "outcome", "outcomeTimestamp"],
                        "properties": {"card": {"type": "string"},
                                       "outcome": {"enum": ["accepted", "overridden"]},
                                       "acceptedSuggestions": {"type": "array"},
                                       "overrideReason": {"type": "object"},
                                       "outcomeTimestamp": {"type": "string"}}}}}}}}},
                "responses": {"200": {"description": "Recorded"}, **_errors(400, 401, 404, 413, 415)}}},
            "/fhir/Questionnaire": {"get": {
                "summary": "Search Questionnaires by canonical url", "operationId": "searchQuestionnaires",
                "parameters": [{"name": "url", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {"200": _json(object_schema, "searchset Bundle")}}},
            "/fhir/Questionnaire/{prefix}": {"get": {
                "summary": "A policy revision's attestation Questionnaire", "operationId": "readQuestionnaire",
                "parameters": [{"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(object_schema, "Questionnaire"), **_errors(404)}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics", "operationId": "metrics",
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/api/decisions": {"get": {
                "summary": "Decision records, filtered", "operationId": "listDecisions",
                "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                               for n in ("payer", "policy", "determination", "from", "to", "limit", "offset")],
                "responses": {"200": _json(object_schema, "Decisions"), **_errors(400)}}},
            "/api/decisions/{decision_id}": {"get": {
                "summary": "One decision with its trace", "operationId": "getDecision",
                "parameters": [{"name": "decision_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {"200": _json(object_schema, "Decision"), **_errors(404)}}},
            "/api/feedback": {"get": {
                "summary": "Feedback records", "operationId": "listFeedback",
                "responses": {"200": _json(object_schema, "Feedback"), **_errors(400)}}},
            "/api/stats": {"get": {
                "summary": "Aggregate counts", "operationId": "stats",
                "responses": {"200": _json(object_schema, "Counts"), **_errors(400)}}},
            "/openapi.json": {"get": {
                "summary": "This description", "operationId": "openapi",
                "responses": {"200": _json(object_schema, "OpenAPI 3.1")}}},
        },
        "components": {"schemas": {"OperationOutcome": {
            "type": "object", "required": ["resourceType", "issue"],
            "properties": {"resourceType": {"const": "OperationOutcome"},
                           "issue": {"type": "array", "minItems": 1, "items": {
                               "type": "object", "required": ["severity", "code"],
                               "properties": {"severity": {"type": "string"}, "code": {"type": "string"},
                                              "diagnostics": {"type": "string"}}}}}}}},
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(spec())
