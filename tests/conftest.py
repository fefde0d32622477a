"""Shared fixtures: an ``app`` and a ``client`` (Flask style), a fixed clock, and paths."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cds_service import create_app

# Tests exercise the service without client tokens unless a test turns authentication on
# (tests/test_auth.py does, with real signed tokens).
os.environ.setdefault("CDS_AUTH_REQUIRED", "false")
# Apps made without their own DATABASE_URL keep decision records in memory, not in ./instance.
os.environ.setdefault("CDS_DATABASE_URL", "sqlite://")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEER_DATA = SHARED / "peer-data"
EXAMPLES = REPO / "fhir_examples"
FIXED_NOW = datetime(2025, 12, 31, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def app():
    return create_app({"TESTING": True, "CLOCK": lambda: FIXED_NOW})


@pytest.fixture
def client(app):
    return app.test_client()


def load_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def example_index():
    return [
        {**e, "file": f"{folder.name}/{e['file']}"}
        for folder in sorted(p for p in EXAMPLES.iterdir() if (p / "index.json").exists())
        for e in load_json(folder / "index.json")
    ]


# Real FHIR servers for the data-gathering tests (sekmet-fhir, and a fault-injecting server).
from fhir_server import fault_server, fhir_server  # noqa: E402,F401
