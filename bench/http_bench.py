"""Benchmarks 2–5: HTTP order-sign under the production server, the no-op limit, growth, memory.

Starts bench/bench_server.py (gunicorn, gthread workers) on 127.0.0.1 and drives it with wrk
(Debian package) from a separate process. Prints tables; ``--markdown`` prints them for RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from workload import full_prefetch_request  # noqa: E402

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
               + summary.errors.status + summary.errors.timeout
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "p50": %f, "p95": %f, "p99": %f, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, errors))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, workers: int, threads: int, tmp: Path):
        self.port = free_port()
        env = dict(os.environ, CDS_AUTH_REQUIRED="false", CDS_DATABASE_URL=f"sqlite:///{tmp / 'bench.sqlite3'}",
                   PYTHONUNBUFFERED="1")
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "bench_server.py"), "--port", str(self.port),
             "--workers", str(workers), "--threads", str(threads)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + "/cds-services", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start; see " + str(tmp / "server.log"))

    def worker_rss_mb(self) -> list[float]:
        out = []
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            status = Path(f"/proc/{child}/status").read_text()
            kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            out.append(kb / 1024)
        return out

    def settle(self, timeout: float = 60.0) -> float:
        """Wait until the workers have stored every decision record of the last run (their writer
        threads would otherwise still be busy while the next row, e.g. the no-op's, is measured)."""
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(self.base + "/metrics", timeout=5).read().decode()
            pending = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith("cds_decision_queue_pending"))
            if pending == 0:
                waited = time.monotonic() - start
                time.sleep(0.5)
                return waited
            time.sleep(0.2)
        raise RuntimeError("decision records still pending after the run")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wrk(url: str, body_file: Path, connections: int, seconds: int, lua: Path) -> dict:
    threads = max(1, min(connections, 2))
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s", "-s", str(lua), url],
        capture_output=True, text=True, env=dict(os.environ, BENCH_BODY=str(body_file)), timeout=seconds + 30)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def post(url: str, data: bytes) -> float:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
        assert resp.status == 200
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    body_file = tmp / "body.json"
    body = full_prefetch_request(100, 30)
    body_file.write_text(json.dumps(body))
    server = Server(args.workers, args.threads, tmp)
    hook = server.base + "/cds-services/order-sign-crd"
    noop = server.base + "/bench/noop"
    try:
        summary = json.loads(urllib.request.urlopen(urllib.request.Request(
            hook, data=body_file.read_bytes(), headers={"Content-Type": "application/json"}, method="POST")).read())
        assert summary["cards"][0]["summary"].startswith("SUPPORTED"), summary["cards"][0]["summary"]
        for _ in range(50):  # warm every worker
            post(hook, body_file.read_bytes())
        rest_rss = server.worker_rss_mb()
        rows = []
        server.settle()
        for c in (1, 8, 32):
            real = wrk(hook, body_file, c, args.seconds, lua)
            real["drain"] = server.settle()
            base = wrk(noop, body_file, c, args.seconds, lua)
            rows.append((c, real, base))
        growth = []
        for n in (10, 100, 1000, 5000):
            data = json.dumps(full_prefetch_request(n, 30)).encode()
            times = [post(hook, data) for _ in range(3)]  # warm
            times = [post(hook, data) for _ in range(15 if n < 5000 else 7)]
            growth.append((n, len(data), statistics.median(times)))
        after_rss = server.worker_rss_mb()
    finally:
        server.stop()

    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"server: gunicorn gthread, {args.workers} workers x {args.threads} threads; load: wrk, {args.seconds} s per row")
    print()
    print("2-3. order-sign, full prefetch (100 Observations, 30 Conditions, Coverage, Patient) vs no-op endpoint")
    print("| concurrency | p50 ms | p95 ms | p99 ms | req/s | errors | records stored after the run | no-op req/s "
          "| no-op p50 ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, real, base in rows:
        print(f"| {c} | {real['p50']:.1f} | {real['p95']:.1f} | {real['p99']:.1f} | {real['rps']:.0f} | {real['errors']} "
              f"| {real['drain']:.1f} s | {base['rps']:.0f} | {base['p50']:.1f} | {real['rps'] / base['rps']:.0%} |")
    print()
    print("4. Growth: one request at a time, median latency against prefetch size")
    print("| Observations | body KB | median ms | ms per 1,000 Observations |")
    print("|---|---|---|---|")
    for n, size, ms in growth:
        print(f"| {n} | {size / 1024:.0f} | {ms:.1f} | {ms / n * 1000:.1f} |")
    print()
    print("5. Memory per worker (RSS MB)")
    print(f"| at rest (after warm-up) | {', '.join(f'{m:.0f}' for m in rest_rss)} |")
    print(f"| after the growth run | {', '.join(f'{m:.0f}' for m in after_rss)} |")
    print()
    print("Targets (issue 8)")
    print("| target | measured | met? |")
    print("|---|---|---|")
    for name, measured, met in targets(rows, growth, after_rss):
        print(f"| {name} | {measured} | {'yes' if met else 'NO'} |")
    shutil.rmtree(tmp, ignore_errors=True)


def targets(rows, growth, after_rss) -> list[tuple[str, str, bool]]:
    """The issue's four targets against this run's figures, and linear growth."""
    c8 = next(real for c, real, _ in rows if c == 8)
    ratio = min(real["rps"] / base["rps"] for _, real, base in rows)
    big = next(ms for n, _, ms in growth if n == 5000)
    per_k = [ms / n * 1000 for n, _, ms in growth if n >= 100]
    return [
        ("p50 ≤ 10 ms and p99 ≤ 50 ms at concurrency 8", f"p50 {c8['p50']:.1f} ms, p99 {c8['p99']:.1f} ms",
         c8["p50"] <= 10 and c8["p99"] <= 50),
        ("throughput ≥ 50 % of the no-op endpoint (lowest ratio of the rows)", f"{ratio:.0%}", ratio >= 0.5),
        ("5,000 Observations end to end ≤ 100 ms", f"{big:.0f} ms", big <= 100),
        ("≤ 150 MB resident per worker", f"{max(after_rss):.0f} MB after the growth run", max(after_rss) <= 150),
        ("growth no worse than linear (ms per 1,000 Observations does not rise from 100 to 5,000)",
         " → ".join(f"{v:.0f}" for v in per_k), per_k[-1] <= per_k[0] * 1.2),
    ]


if __name__ == "__main__":
    main()
