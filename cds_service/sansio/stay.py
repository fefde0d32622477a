"""Inpatient stays and home oxygen: the two-day rule, as advice on encounter-start / encounter-discharge.

CP.MP.190 I.D.1 and MG-OXY II.A.2.p4 count a qualifying test from an inpatient stay only if
it is the latest valid test of its context in the stay and dated in [discharge − 2, discharge]
(contract §7.2, §13.14).  A test taken earlier in the stay does not qualify home oxygen, so the
time to know is while the patient is in hospital.  These hooks are secondary (CRD 2.0.1 req.
165/167, CRD 2.2 hook-19): the advice is information, never a determination and never a
statement that documentation is needed.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Mapping

from .cards import TOPIC_SYSTEMS
from .evidence import INPATIENT_CLASSES, ON_O2, Extractor
from .records import Records

V3_ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
WINDOW_DAYS = 2


def encounter_class(encounter: Mapping) -> str | None:
    klass = encounter.get("class")
    for coding in klass if isinstance(klass, list) else [klass]:  # R4: a Coding (R5: a list of concepts)
        if isinstance(coding, Mapping):
            code = coding.get("code")
            if isinstance(code, str) and coding.get("system") in (V3_ACTCODE, None):
                return code
            for c in coding.get("coding") if isinstance(coding.get("coding"), list) else []:
                if isinstance(c, Mapping) and c.get("system") in (V3_ACTCODE, None) and isinstance(c.get("code"), str):
                    return c["code"]
    return None


def is_inpatient(encounter: Mapping) -> bool:
    """Contract §7.2: an inpatient encounter has class IMP or ACUTE."""
    return encounter_class(encounter) in INPATIENT_CLASSES


def setting_rules(policy, route: str | None) -> list:
    """The policy's inpatient-timing criteria on the section the order routes to."""
    if route is None or route not in policy.sections:
        return []
    out, stack = [], [policy.sections[route]]
    while stack:
        node = stack.pop()
        params = node.params or {}
        if params.get("rule") == "setting" and params.get("inpatient") is True:
            out.append(node)
        stack.extend(reversed(node.children))
    return out


def discharge_date(encounter: Mapping, today: date) -> tuple[date, bool]:
    """(discharge date, planned): period.end when recorded, else today (the discharge being done now)."""
    from .dates import parse_date

    period = encounter.get("period") if isinstance(encounter.get("period"), Mapping) else {}
    end = parse_date(period.get("end"))
    return (end, True) if end else (today, False)


def stay_tests_in_window(records: Records, base: str, encounter_ref: str, start: date, end: date) -> list:
    """Oxygen tests (SpO2/SaO2, PaO2) of this stay dated in [start, end] that could qualify: a test
    taken on oxygen never does (contract §5.4, §5.5); one of unknown oxygen status might."""
    tests = Extractor(records, base, end).oxygen_tests()
    return [t for t in tests if t.encounter_ref == encounter_ref and start <= t.date <= end and t.o2 != ON_O2]


@dataclass
class Advice:
    order_ref: str
    code: str | None
    payer_name: str
    policy_display: str
    policy_url: str | None
    criteria: list[str]  # criterion IDs of the inpatient-timing rule
    summary: str
    detail: str


def admission_advice(order_ref: str, code: str | None, label: str, payer_name: str, policy, criteria: list[str],
                     encounter_ref: str) -> Advice:
    what = f"{code} {label}".strip() if code else order_ref
    summary = f"Home oxygen {what}: qualifying test within {WINDOW_DAYS} days before discharge ({policy.display})"
    ids = ", ".join(f"`{c}`" for c in criteria)
    detail = "\n".join([
        f"**{policy.display}** ({payer_name}) — {order_ref}",
        f"- {ids}: a blood gas or oximetry test from this inpatient stay ({encounter_ref}) qualifies home oxygen only "
        f"if it is the latest valid test of its kind in the stay and was taken no earlier than {WINDOW_DAYS} days "
        f"before the discharge date. Tests taken earlier in the stay are not used.",
    ])
    return Advice(order_ref, code, payer_name, policy.display, policy.url, criteria, _short(summary), detail)


def discharge_advice(order_ref: str, code: str | None, label: str, payer_name: str, policy, criteria: list[str],
                     encounter_ref: str, start: date, end: date, planned: bool) -> Advice:
    what = f"{code} {label}".strip() if code else order_ref
    summary = f"Home oxygen {what}: no room-air oxygen test from this stay dated {start.isoformat()}–{end.isoformat()}"
    ids = ", ".join(f"`{c}`" for c in criteria)
    when = "the recorded discharge date" if planned else "today's discharge"
    detail = "\n".join([
        f"**{policy.display}** ({payer_name}) — {order_ref}",
        f"- {ids}: an inpatient test qualifies home oxygen only if taken in [{start.isoformat()}, {end.isoformat()}] "
        f"({WINDOW_DAYS} days before {when}) and it is the latest valid test of its kind in the stay. No oxygen "
        f"saturation or blood gas result from {encounter_ref} taken off oxygen in that window is on record.",
    ])
    return Advice(order_ref, code, payer_name, policy.display, policy.url, criteria, _short(summary), detail)


def _short(text: str, limit: int = 139) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def card(advice: Advice, dialect: str, uuid_factory=uuid.uuid4) -> dict:
    source = {
        "label": advice.payer_name,
        "topic": {"system": TOPIC_SYSTEMS[dialect], "code": "coverage-info", "display": "Coverage Information"},
    }
    if advice.policy_url:
        source["url"] = advice.policy_url
    return {
        "uuid": str(uuid_factory()),
        "summary": advice.summary,
        "indicator": "info",
        "detail": advice.detail,
        "source": source,
        "extension": {
            "davinci-crd.associated-resource": [{"reference": advice.order_ref}],
            "cds-coverage.advice": {"order": advice.order_ref, "code": advice.code, "policy": advice.policy_display,
                                    "criteria": list(advice.criteria), "rule": "inpatient-test-timing"},
        },
    }


def window(discharge: date) -> tuple[date, date]:
    return discharge - timedelta(days=WINDOW_DAYS), discharge
