"""A private PostgreSQL server for the storage tests: initdb in a temp folder, 127.0.0.1 on a free port.

Uses the server binaries of Debian's ``postgresql`` package (``make test`` installs it with
apt-get when missing). As root, the server runs as the ``postgres`` user (PostgreSQL refuses
root). One cluster per test session, started on first use and stopped at the end; each test
gets a database of its own. Where no server can be found the tests skip with the reason —
except under CI (``CI=true``) or with ``CDS_TEST_REQUIRE_POSTGRES=1``, where they fail.

    from postgres import pg_server, pg_url   # fixtures
"""
from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REQUIRED = os.environ.get("CDS_TEST_REQUIRE_POSTGRES") == "1" or os.environ.get("CI") == "true"


def _bin_dir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    found = shutil.which("initdb")
    for path in candidates + ([found] if found else []):
        bin_dir = Path(path).resolve().parent
        if (bin_dir / "pg_ctl").exists() and (bin_dir / "postgres").exists():
            return bin_dir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster: ``start()``, ``stop()``, ``url(db)``, ``create_database()``."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cds-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o700)
        self.running = False
        self._run([self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                   "--no-sync", "--no-instructions"])
        self.start()

    def _run(self, argv, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}")
        return proc

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run([self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start"])
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run([self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop"], check=False)
            self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = "cds_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


_server: PostgresServer | None = None
_failure: str | None = None


def shared_server() -> PostgresServer:
    """The session's server, started on first use; skips (or fails under CI) when impossible."""
    global _server, _failure
    if _server is None and _failure is None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            _failure = ("PostgreSQL server binaries not found (Debian package postgresql); "
                        "`make test` installs them with apt-get as root")
        elif os.geteuid() == 0 and shutil.which("runuser") is None:
            _failure = "running as root without runuser: cannot start PostgreSQL as the postgres user"
        else:
            try:
                _server = PostgresServer(bin_dir)
                atexit.register(_server.destroy)
            except Exception as exc:  # noqa: BLE001
                _failure = f"could not start a PostgreSQL server: {exc}"
    if _server is None:
        if REQUIRED:
            pytest.fail(f"PostgreSQL is required here (CI): {_failure}")
        pytest.skip(_failure)
    if not _server.running:  # a test that stopped it failed before restarting it
        _server.start()
    return _server


@pytest.fixture
def pg_server() -> PostgresServer:
    return shared_server()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
