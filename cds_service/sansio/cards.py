"""CDS Hooks cards for coverage determinations (contract §10.4): short, exact, explainable."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date

from .engine import INSUFFICIENT_DOCUMENTATION, NOT_APPLICABLE, NOT_MEDICALLY_NECESSARY, SUPPORTED, Evaluation, Result
from .logic import Tri

TOPIC_SYSTEMS = {
    "2.0.1": "http://hl7.org/fhir/us/davinci-crd/CodeSystem/temp",
    "2.2": "http://terminology.hl7.org/CodeSystem/cdshooks-card-type",
}
EVALUATION_KEY = "cds-coverage.evaluation"
SUMMARY_MAX = 139
TECHNICAL_SUMMARY = "Coverage could not be evaluated"
# Reasons a prescriber may give for proceeding despite a coverage warning (CDS Hooks 2.0
# card.overrideReasons); they come back in feedback's overrideReason.reason.
OVERRIDE_REASON_SYSTEM = "http://example.org/fhir/cds-coverage/CodeSystem/coverage-override-reason"
OVERRIDE_REASONS = (
    ("documentation-elsewhere", "Supporting documentation exists outside this record and will be submitted"),
    ("clinical-judgment", "Medically necessary in my clinical judgment; will request prior authorization or appeal"),
    ("patient-informed", "Patient informed the order may not be covered and chooses to proceed"),
    ("evaluation-incorrect", "The coverage evaluation used incorrect or outdated information"),
)
OVERRIDABLE = (NOT_MEDICALLY_NECESSARY, INSUFFICIENT_DOCUMENTATION)


@dataclass
class CardInput:
    determination: str
    order_ref: str
    code: str | None
    label: str  # e.g. "portable oxygen"
    payer_name: str
    policy_display: str | None = None  # "CP.MP.190 rev 01/23"
    policy_url: str | None = None
    prefix: str | None = None
    t0: date | None = None
    t0_assumed: bool = False
    r: date | None = None
    evaluation: Evaluation | None = None
    reason: str | None = None
    advisories: list[str] = field(default_factory=list)
    advisory_texts: dict = field(default_factory=dict)
    questionnaire_link: str | None = None  # where the EHR can fetch the attestation Questionnaire
    code_base: str = "http://example.org/fhir/cds-coverage"  # {base}: the override-reason code system


def summary(ci: CardInput) -> str:
    if ci.determination == "TECHNICAL_FAILURE":
        return TECHNICAL_SUMMARY
    if ci.determination == NOT_APPLICABLE and ci.policy_display is None:
        text = f"NOT_APPLICABLE: no payer policy on file for {ci.code or ci.order_ref}"
    else:
        text = f"{ci.determination}: {ci.code or ci.order_ref} {ci.label} ({ci.policy_display})".replace("  ", " ")
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def _short(text: str, limit: int = 90) -> str:
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def line_for(result: Result) -> str:
    if result.value == Tri.UNKNOWN and result.resolution:
        tail = f"needs {result.resolution}"
    elif result.children:
        tail = _short(result.text)
    elif result.evidence:
        tail = "; ".join(e.text for e in result.evidence)
    else:
        tail = result.note or result.text
    if result.value == Tri.FALSE and result.note and result.evidence:
        tail = f"{tail} ({result.note})"
    return f"- `{result.id}` — {result.value.value} — {tail}"


def detail(ci: CardInput) -> str:
    lines = []
    if ci.policy_display:
        when = f"T0 {ci.t0.isoformat()}" + (" (no authoredOn: today)" if ci.t0_assumed else "") if ci.t0 else ""
        rec = f", R {ci.r.isoformat()}" if ci.r else ""
        lines.append(f"**{ci.policy_display}** ({ci.payer_name}), {when}{rec}")
    else:
        lines.append(f"**No payer policy on file** ({ci.payer_name})")
    if ci.evaluation is not None:
        lines += [line_for(r) for r in ci.evaluation.deciding]
    if ci.reason and (ci.evaluation is None or not ci.evaluation.deciding):
        lines.append(ci.reason)
    if ci.advisories:
        lines.append("")
        lines.append("Advisories: " + ", ".join(ci.advisories))
        for code in ci.advisories:
            if code in ci.advisory_texts:
                lines.append(f"- {code}: {ci.advisory_texts[code]}")
    return "\n".join(lines)


def evaluation_extension(ci: CardInput, payer_id: str | None) -> dict:
    """The machine-readable evaluation carried on each card (documented in the README)."""
    ev = ci.evaluation
    out = {
        "determination": ci.determination,
        "order": ci.order_ref,
        "code": ci.code,
        "payer": payer_id,
        "policy": ci.policy_display,
        "revision": ci.prefix,
        "t0": ci.t0.isoformat() if ci.t0 else None,
        "r": ci.r.isoformat() if ci.r else None,
        "route": ev.route if ev else None,
        "advisories": list(ci.advisories),
        "deciding": [r.id for r in ev.deciding] if ev else [],
        "criteria": [
            {
                "id": r.id,
                "value": r.value.value,
                **({"op": r.op.upper()} if r.op else {}),
                "evidence": [e.reference for e in r.evidence],
                **({"resolution": r.resolution} if r.value == Tri.UNKNOWN and r.resolution else {}),
            }
            for r in (ev.nodes()[1:] if ev and ev.root else [])
        ],
    }
    if ci.reason:
        out["reason"] = ci.reason
    return out


def card(ci: CardInput, dialect: str, payer_id: str | None, uuid_factory=uuid.uuid4) -> dict:
    indicator = "info" if ci.determination in (SUPPORTED, NOT_APPLICABLE) else "warning"
    source = {
        "label": ci.payer_name,
        "topic": {"system": TOPIC_SYSTEMS[dialect], "code": "coverage-info", "display": "Coverage Information"},
    }
    if ci.policy_url:
        source["url"] = ci.policy_url
    out = {
        "uuid": str(uuid_factory()),
        "summary": summary(ci),
        "indicator": indicator,
        "detail": detail(ci),
        "source": source,
        "extension": {
            "davinci-crd.associated-resource": [{"reference": ci.order_ref}],
            EVALUATION_KEY: evaluation_extension(ci, payer_id),
        },
    }
    if ci.determination in OVERRIDABLE:
        out["overrideReasons"] = [
            {"system": f"{ci.code_base}/CodeSystem/coverage-override-reason", "code": code, "display": display}
            for code, display in OVERRIDE_REASONS
        ]
    if ci.questionnaire_link:
        out["links"] = [{"label": "Attestation questionnaire for this policy", "url": ci.questionnaire_link, "type": "absolute"}]
    return out
