"""Command line: ``cds-service serve`` and ``cds-service evaluate REQUEST.json``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .library import PolicyError


def _app(args):
    from . import create_app

    config = {}
    if getattr(args, "policies", None):
        config["POLICY_DIR"] = args.policies
    if getattr(args, "dev", False):
        config["DEVELOPMENT"] = True  # e.g. the console may be open (CONSOLE_OPEN) without a login
    return create_app(config)


def serve(args) -> int:
    from .logs import configure

    configure(logging.INFO)
    if not args.dev:
        from .server import prepare_metrics

        prepare_metrics()  # before the app: every worker's /metrics reports all workers
    app = _app(args)
    if args.dev:
        app.run(host=args.host, port=args.port, debug=False, use_reloader=False, threaded=True)
        return 0
    from .server import serve as production_serve

    production_serve(app, args.host, args.port, args.workers, args.threads)
    return 0


def evaluate(args) -> int:
    """Print the cards and each order's criteria trace for a hook request file."""
    path = Path(args.request)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    app = _app(args)
    hook = body.get("hook") if isinstance(body, dict) else None
    service = args.service or {"order-select": "order-select-crd"}.get(hook, "order-sign-crd")
    with app.test_client() as client:
        resp = client.post(f"/cds-services/{service}", json=body)
    if resp.status_code != 200:
        print(f"HTTP {resp.status_code}", file=sys.stderr)
        print(json.dumps(resp.get_json(), indent=2))
        return 1
    payload = resp.get_json()
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    for card in payload["cards"]:
        ev = card["extension"].get("cds-coverage.evaluation", {})
        print("=" * 78)
        print(f"[{card['indicator'].upper()}] {card['summary']}")
        print(card["detail"])
        print("-" * 78)
        print(f"trace ({ev.get('revision')}, route {ev.get('route')}):")
        for c in ev.get("criteria", []):
            depth = c["id"].split("/", 1)[-1].count(".")
            refs = f"  [{', '.join(c['evidence'])}]" if c["evidence"] else ""
            print(f"  {'  ' * depth}{c['id']}: {c['value']}{(' ' + c['op']) if c.get('op') else ''}{refs}")
    for action in payload.get("systemActions", []):
        ext = action["resource"]["extension"][-1]
        values = {e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in ext["extension"]}
        print("=" * 78)
        print(f"systemAction {action['type']} {action['resource']['resourceType']}/{action['resource'].get('id')}: "
              f"covered={values.get('covered')} pa-needed={values.get('pa-needed', '-')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cds-service", description=__doc__)
    parser.add_argument("--policies", help="policy library folder (default: the bundled policies)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the HTTP service")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("--workers", type=int, help="worker processes (default: config WORKERS, else 2 per core)")
    p_serve.add_argument("--threads", type=int, help="threads per worker (default: config THREADS, else 4)")
    p_serve.add_argument("--dev", action="store_true", help="Flask's development server instead of gunicorn")
    p_serve.set_defaults(func=serve)
    p_eval = sub.add_parser("evaluate", help="evaluate a hook request file and print cards and trace")
    p_eval.add_argument("request")
    p_eval.add_argument("--service", help="service id (default from the request's hook)")
    p_eval.add_argument("--json", action="store_true", help="print the raw CDS Hooks response")
    p_eval.set_defaults(func=evaluate)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PolicyError as exc:
        print(f"error: invalid policy library: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
