"""Predicates any policy can use: attestations, diagnoses, age, order codes."""
from __future__ import annotations

from typing import Mapping

from ..attestations import Answer, Attestations
from ..engine import Context, Evidence, Node, Outcome, predicate
from ..logic import Tri

ORDER_ROLE_GROUPS = {
    "portable": {"portable", "portable-contents"},
    "stationary": {"stationary", "stationary-contents"},
}


def attestations(ctx: Context) -> Attestations:
    shared = ctx.shared
    if "attestations" not in shared:
        case = ctx.case
        responses = case.records.of_type("QuestionnaireResponse")
        shared["attestations"] = Attestations(responses, ctx.policy.prefix, case.t0, case.today)
    return shared["attestations"]


def answer(ctx: Context, item_id: str) -> Answer | None:
    """The answer to a questionnaire item of this revision, typed by the questionnaire."""
    link = ctx.qualify(item_id)
    item = ctx.policy.items[link]
    return attestations(ctx).get(link, item.type, item.freshness)


def resolution_for(ctx: Context, item_id: str) -> str:
    link = ctx.qualify(item_id)
    item = ctx.policy.items[link]
    return f"answer Questionnaire item `{link}` ({item.type})"


def attested_outcome(ctx: Context, item_id: str, why_unknown: str = "") -> Outcome:
    """Boolean attestation → TRUE/FALSE; unanswered or stale → UNKNOWN with its resolution."""
    ans = answer(ctx, item_id)
    resolution = resolution_for(ctx, item_id)
    if why_unknown:
        resolution = f"{why_unknown}, or {resolution}"
    if ans is None:
        return Outcome(Tri.UNKNOWN, resolution=resolution)
    if ans.stale:
        return Outcome(
            Tri.UNKNOWN,
            [Evidence(ans.source, ans.describe())],
            resolution=f"{resolution}; the answer on file is stale (authored outside T0 − 90 days to today)",
        )
    return Outcome(Tri.of(bool(ans.value)), [Evidence(ans.source, ans.describe())])


def short_id(ctx: Context, node: Node) -> str:
    return node.id.split("/", 1)[1]


@predicate("attestation")
def attestation(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A criterion only the prescriber's attestation can establish."""
    return attested_outcome(ctx, params.get("item", short_id(ctx, node)))


@predicate("attested_at_least")
def attested_at_least(ctx: Context, node: Node, params: Mapping) -> Outcome:
    item_id = params.get("item", short_id(ctx, node))
    ans = answer(ctx, item_id)
    if ans is None or ans.stale:
        return Outcome(Tri.UNKNOWN, resolution=resolution_for(ctx, item_id))
    return Outcome(Tri.of(ans.value >= params["min"]), [Evidence(ans.source, ans.describe())])


@predicate("diagnosis_or_attestation")
def diagnosis_or_attestation(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A coded diagnosis in the value sets decides; otherwise the attestation(s)."""
    case = ctx.case
    for vs in params["value_sets"]:
        found = case.diagnoses_in(vs)
        if found:
            d = found[0]
            return Outcome(Tri.TRUE, [Evidence(d.ref, f"{d.ref} {d.code} ({vs})")])
    items = params.get("attestations") or [short_id(ctx, node)]
    outcomes = [attested_outcome(ctx, i) for i in items]
    for o in outcomes:
        if o.value == Tri.TRUE:
            return o
    if any(o.value == Tri.UNKNOWN for o in outcomes):
        sets = ", ".join(params["value_sets"])
        res = " or ".join(resolution_for(ctx, i) for i in items)
        return Outcome(
            Tri.UNKNOWN,
            [e for o in outcomes for e in o.evidence],
            resolution=f"a present Condition coded in {sets}, or {res}",
        )
    return Outcome(Tri.FALSE, [e for o in outcomes for e in o.evidence])


@predicate("diagnosis_present")
def diagnosis_present(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """Closed world (INT-09): an absent diagnosis is FALSE."""
    found = [d for vs in params["value_sets"] for d in ctx.case.diagnoses_in(vs)]
    if found:
        return Outcome(Tri.TRUE, [Evidence(d.ref, f"{d.ref} {d.code}") for d in found[:3]])
    return Outcome(Tri.FALSE, note=f"no present diagnosis in {', '.join(params['value_sets'])}")


@predicate("order_code_in")
def order_code_in(ctx: Context, node: Node, params: Mapping) -> Outcome:
    code = ctx.case.code
    ok = code in params["codes"]
    return Outcome(Tri.of(ok), [Evidence(ctx.case.order_ref, f"{ctx.case.order_ref} {code}")],
                   note=None if ok else f"{code} is not among {', '.join(params['codes'])}")


@predicate("age_at_least")
def age_at_least(ctx: Context, node: Node, params: Mapping) -> Outcome:
    case = ctx.case
    years = params["years"]
    value = case.age_at_least(years)
    patient_ref = f"Patient/{case.records.patient_id}"
    if value is None:
        why = "no birth date" if case.birth is None else "the partial birth date cannot decide"
        return Outcome(Tri.UNKNOWN, resolution=f"record Patient.birthDate ({why}; age {years} on T0 decides the route)")
    birth = case.patient.get("birthDate")
    return Outcome(Tri.of(value), [Evidence(patient_ref, f"{patient_ref} born {birth}: age {'≥' if value else '<'} {years} on {case.t0.isoformat()}")])


@predicate("indication_only")
def indication_only(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """The indication (reasonCode, else present Conditions) has the value set and none of ``unless``."""
    case = ctx.case
    pool = case.indication_diagnoses
    found = case.diagnoses_in(params["value_set"], pool)
    blockers = [d for vs in params.get("unless", []) for d in case.diagnoses_in(vs, pool)]
    value = bool(found) and not blockers
    return Outcome(Tri.of(value), [Evidence(d.ref, f"{d.ref} {d.code}") for d in (found + blockers)[:3]])


APPLIES: dict = {}


def applies_condition(name: str):
    """Register a node ``applies`` condition: a structural fact, TRUE or FALSE, never UNKNOWN."""

    def register(fn):
        APPLIES[name] = fn
        return fn

    return register


@applies_condition("order_role")
def _order_role(ctx: Context, value) -> bool:
    roles = set()
    for v in value:
        roles |= ORDER_ROLE_GROUPS.get(v, {v})
    return ctx.case.role in roles


@applies_condition("order_codes")
def _order_codes(ctx: Context, value) -> bool:
    return ctx.case.code in value


def condition_applies(ctx: Context, key: str, value: object) -> bool:
    """Node ``applies`` conditions: structural facts about the order, never UNKNOWN."""
    if key not in APPLIES:
        raise ValueError(f"unknown applies condition {key!r}")
    return APPLIES[key](ctx, value)
