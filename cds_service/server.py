"""Production serving: the app under gunicorn, workers and threads from configuration.

The development server is only used with ``cds-service serve --dev``.
"""
from __future__ import annotations

import os

from gunicorn.app.base import BaseApplication


def default_workers() -> int:
    return max(2, min(8, (os.cpu_count() or 1) * 2))


class GunicornServer(BaseApplication):
    def __init__(self, app, options: dict):
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        return self.application


def serve(app, host: str, port: int, workers: int | None = None, threads: int | None = None) -> None:
    cfg = app.config
    options = {
        "bind": f"{host}:{port}",
        "workers": workers or cfg.get("WORKERS") or default_workers(),
        "threads": threads or cfg.get("THREADS") or 4,
        "worker_class": "gthread",
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,  # request lines carry no patient data, but the decision log is what operators need
        "errorlog": "-",
        "loglevel": "info",
        # The app is created before forking: the policy library is loaded and validated once.
        "preload_app": True,
    }
    GunicornServer(app, options).run()
