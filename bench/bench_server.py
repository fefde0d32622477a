"""The production server (gunicorn, as `cds-service serve` runs it) plus a no-op endpoint.

The no-op endpoint reads and parses the same JSON body (with the service's own parser, orjson) and
answers ``{"cards": []}``: the
limit of what this server stack can do, measured beside the real hook in the same run.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flask import Response, request  # noqa: E402

from cds_service import create_app  # noqa: E402
from cds_service.hooks import parse_body, response_bytes  # noqa: E402
from cds_service.logs import configure as configure_logs  # noqa: E402
from cds_service.server import prepare_metrics, serve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    # As `cds-service serve` sets up: JSON decision logs on stderr, Prometheus in multiprocess mode.
    configure_logs(logging.INFO)
    prepare_metrics()
    app = create_app()

    @app.post("/bench/noop")
    def noop():
        parse_body(request.get_data(cache=False))  # the service's own parser (orjson)
        return Response(response_bytes({"cards": []}), mimetype="application/json")

    serve(app, "127.0.0.1", args.port, args.workers, args.threads)


if __name__ == "__main__":
    main()
