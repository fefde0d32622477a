"""Realistic hook requests for the benchmarks: full prefetch of a given size."""
from __future__ import annotations

import copy
import json
import random
import sys
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import builders as b  # noqa: E402

ICD = ["J44.9", "I50.9", "R60.0", "E11.9", "I10", "N18.3", "K21.9", "M54.5", "F32.9", "G47.33", "I48.91", "E78.5"]


def full_prefetch_request(n_observations: int = 100, n_conditions: int = 30, seed: int = 7) -> dict:
    """An adult COPD member ordering E1390 with n SpO2/PaO2/hematocrit Observations and n Conditions."""
    rng = random.Random(seed)
    observations = []
    for i in range(n_observations):
        days = rng.randint(0, 360)
        kind = rng.random()
        if kind < 0.6:
            observations.append(b.spo2(rng.randint(84, 99), b.before(days), rng.choice(["REST", "EXERCISE", "SLEEP"]),
                                       rng.choice(["room", "on"]), id=f"obs-{i}"))
        elif kind < 0.85:
            observations.append(b.pao2(rng.randint(50, 95), b.before(days), id=f"obs-{i}"))
        else:
            observations.append(b.hematocrit(rng.randint(38, 58), b.before(days), id=f"obs-{i}"))
    conditions = [b.condition(ICD[i % len(ICD)], onset=b.before(rng.randint(30, 2000))) for i in range(n_conditions)]
    return b.request(order_code="E1390", observations=observations, conditions=conditions,
                     questionnaire_answers={"I.E": True, "I.D.2": True})


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    json.dump(full_prefetch_request(n), sys.stdout)
