"""bench/soak.py for 30 seconds: the production server (gunicorn, a subprocess) under a steady mixed
load while its FHIR server injects random delays, errors and resets — no error responses, correct
determinations, every decision recorded, no worker restarted, memory steady. ``make soak`` runs the
same for 10 minutes (its last result is in bench/RESULTS.md)."""
from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import soak  # noqa: E402


def test_thirty_second_soak_with_fhir_faults():
    lines: list[str] = []
    result = soak.run(seconds=30, rate=8, workers=2, threads=4, concurrency=16, progress=lines.append)
    report = result.table()
    assert result.total >= 200, report
    assert result.errors == [], f"{report}\n{result.errors[:5]}"
    assert result.wrong == [], f"{report}\n{result.wrong[:5]}"
    assert sum(result.faults[f] for f in ("500", "503", "429", "reset", "hang-up", "delay")) > 0, report
    assert result.missing == [] and result.mismatched == [], f"{report}\n{result.missing[:5]} {result.mismatched[:5]}"
    assert result.unknown_service_recorded == result.unknown_service, report
    assert not result.restarted, report
    assert result.exit_status == 0, report
    assert result.growth <= soak.GROWTH_LIMIT, report
    assert result.passed, report
