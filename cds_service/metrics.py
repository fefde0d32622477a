"""GET /metrics in the Prometheus text format, one registry per app.

Under gunicorn with several workers, ``cds-service serve`` sets ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode) so that any worker's /metrics reports the sum over
all workers; otherwise each process reports its own counts.
"""
from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .decisions.recorder import _count
from .services import SERVICES

bp = Blueprint("metrics", __name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        r = {"registry": registry}
        self.requests = Counter("cds_requests", "HTTP requests to the CDS Hooks endpoints.",
                                ["service", "endpoint", "status"], **r)
        self.latency = Histogram("cds_request_seconds", "Time to answer a CDS Hooks request.",
                                 ["service", "endpoint"], buckets=LATENCY_BUCKETS, **r)
        self.determinations = Counter("cds_determinations", "Coverage determinations, one per evaluated order.",
                                      ["service", "payer", "policy", "determination"], **r)
        self.feedback = Counter("cds_feedback", "Card feedback entries received.", ["service", "outcome"], **r)
        self.override_reasons = Counter("cds_feedback_override_reasons", "Override reasons in feedback.",
                                        ["code"], **r)
        self.fhir_queries = Counter("cds_fhir_queries", "FHIR queries made to gather data.", ["service"], **r)
        self.fhir_errors = Counter("cds_fhir_query_errors", "FHIR queries that failed.", ["service"], **r)
        self.fhir_seconds = Counter("cds_fhir_query_seconds", "Time spent in FHIR queries (seconds).",
                                    ["service"], **r)
        self.queue_pending = Gauge("cds_decision_queue_pending", "Decision and feedback records waiting to be stored.",
                                   multiprocess_mode="livesum", **r)
        self.store_up = Gauge("cds_decision_store_up", "1 when the last write to the decision store succeeded.",
                              multiprocess_mode="livemin", **r)
        self.records_stored = Counter("cds_decision_records_stored", "Records written to the decision store.",
                                      ["kind"], **r)
        self.records_dropped = Counter("cds_decision_records_dropped",
                                       "Records that could not be stored: queue full, or store down at shutdown.", **r)
        self.records_rejected = Counter("cds_decision_records_rejected", "Records the store refused as invalid.", **r)
        self.store_errors = Counter("cds_decision_store_errors", "Failed attempts to write a batch to the store.", **r)
        self.store_write_seconds = Histogram("cds_decision_store_write_seconds", "Time to write one batch.",
                                             buckets=LATENCY_BUCKETS, **r)
        self.replay_fallbacks = Counter("cds_auth_replay_fallbacks",
                                        "Client tokens whose replay check fell back to the per-process cache "
                                        "because the shared store was unreachable.", **r)

    def observe_event(self, event: dict, policy_of) -> None:
        """A hook call event (see ``hooks._record``): determinations and FHIR work."""
        service = str(event.get("service") or "-")[:64]
        traces = [t for t in event.get("traces") or [] if isinstance(t, dict)]
        for t in traces:
            policy = t.get("policy") or policy_of(t.get("revision")) or "-"
            self.determinations.labels(service, str(t.get("payer") or "-")[:64], str(policy)[:64],
                                       str(t.get("determination") or "UNKNOWN")[:40]).inc()
        queries, errors = _count(event.get("fhirQueries")), _count(event.get("fhirErrors"))
        if queries is None:
            queries = sum(_count(t.get("fhirQueries")) or 0 for t in traces)
        if errors is None:
            errors = sum(_count(t.get("fhirErrors")) or 0 for t in traces)
        if queries:
            self.fhir_queries.labels(service).inc(queries)
        if errors:
            self.fhir_errors.labels(service).inc(errors)
        ms = event.get("fhirMs", event.get("fhirElapsedMs"))
        if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms > 0:
            self.fhir_seconds.labels(service).inc(ms / 1000.0)

    def observe_feedback(self, item: dict) -> None:
        row = item["row"]
        self.feedback.labels(row["service"], row["outcome"]).inc()
        if row["outcome"] == "overridden":
            self.override_reasons.labels(row["override_code"] or "-").inc()


def _labels() -> tuple[str, str] | None:
    """(service, endpoint) of a CDS Hooks request; unknown service ids collapse to "unknown"."""
    path = request.path.rstrip("/")
    if not path.startswith("/cds-services"):
        return None
    parts = path.split("/")[2:]
    if not parts:
        return "-", "discovery"
    service = parts[0] if parts[0] in SERVICES else "unknown"
    endpoint = "feedback" if len(parts) == 2 and parts[1] == "feedback" else "hook" if len(parts) == 1 else "other"
    return service, endpoint


def init_app(app: Flask) -> Metrics:
    metrics = Metrics(CollectorRegistry(auto_describe=True))
    app.extensions["cds_metrics"] = metrics

    @app.before_request
    def _start_timer():
        g.cds_started = time.perf_counter()

    @app.after_request
    def _count(response):
        labels = _labels()
        if labels is not None:
            metrics.requests.labels(labels[0], labels[1], str(response.status_code)).inc()
            started = g.get("cds_started")
            if started is not None:
                metrics.latency.labels(*labels).observe(time.perf_counter() - started)
        return response

    app.register_blueprint(bp)
    return metrics


@bp.get("/metrics")
def metrics_endpoint():
    folder = multiprocess_dir()
    if folder:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
    else:
        registry = current_app.extensions["cds_metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
