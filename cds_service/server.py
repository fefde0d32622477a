"""Production serving: the app under gunicorn, workers and threads from configuration.

The development server is only used with ``cds-service serve --dev``.
"""
from __future__ import annotations

import atexit
import ctypes
import gc
import os
import shutil
import tempfile

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


def prepare_metrics() -> str:
    """Prometheus multiprocess mode for gunicorn workers: call before the app is created.

    Uses ``PROMETHEUS_MULTIPROC_DIR`` when set (an empty folder), else a new temporary one.
    """
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        folder = tempfile.mkdtemp(prefix="cds-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    return folder


def _worker_exit(server, worker) -> None:
    """Graceful worker shutdown: store the decision records still queued in this worker."""
    flask_app = getattr(worker.app, "application", None)
    recorder = flask_app.extensions.get("cds_decisions") if flask_app is not None else None
    if recorder is not None and hasattr(recorder, "close"):
        recorder.close()


_LARGE_BODY = 1024 * 1024
try:  # glibc (no-op elsewhere)
    _libc = ctypes.CDLL("libc.so.6")
    _malloc_trim, _mallopt = _libc.malloc_trim, _libc.mallopt
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _malloc_trim = _mallopt = None
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8


def tune_malloc() -> None:
    """glibc's allocator for workers that now and then read a request of megabytes: buffers of 128 KiB
    and more (a request body, its parsed strings) are mapped and unmapped on their own, instead of
    glibc raising that threshold after the first large free and serving them from a heap that then
    stays fragmented; and at most two allocation arenas per worker (glibc gives each thread its own
    otherwise). Measured: a worker's resident size after three 5,000-Observation requests 134 → 113 MB."""
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        _mallopt(_M_ARENA_MAX, 2)


def _post_request(worker, req, environ, resp) -> None:
    """After a response to a large request (a prefetch of 10^3+ resources, parsed into tens of MB of
    objects) is sent, return the freed memory to the system, so a worker's resident size stays near
    its size at rest instead of its largest request's (bench/RESULTS.md, memory per worker)."""
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if size >= _LARGE_BODY and _malloc_trim is not None:
        gc.collect()
        _malloc_trim(0)


def _child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def tune_gc(thresholds) -> None:
    """Collect once, move everything alive now (the app, the policy library) out of the collector's
    view (gc.freeze: workers forked after it share those pages and never rescan them), and set the
    generation thresholds (config GC_THRESHOLDS). Call after the app is built, before forking."""
    gc.collect()
    gc.freeze()
    if thresholds:
        gc.set_threshold(*(int(t) for t in thresholds))


def serve(app, host: str, port: int, workers: int | None = None, threads: int | None = None) -> None:
    cfg = app.config
    tune_gc(cfg.get("GC_THRESHOLDS"))
    tune_malloc()
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
        # Decision records still queued in a worker are stored before it exits (also at exit).
        "worker_exit": _worker_exit,
        "child_exit": _child_exit,
        "post_request": _post_request,
    }
    GunicornServer(app, options).run()
