"""CP.MP.173 implantable intrathecal/epidural pain pump predicates (contract §3.2, §5.8, §6, §7.1, §9.3).

The pump orders in one ``draftOrders`` form an *episode*; the drugs that go with
them (J2274, intrathecal/epidural or opioid/baclofen MedicationRequests) decide
applicability and the ordered ingredients the allergy criteria check.  The
structured data the criteria read:

* the trial: the latest completed TRIAL Procedure (CPT 62320–62327) in [T0 − 365, T0],
  with pain scores (LOINC 72514-3) before and after it (§5.8);
* psychotherapy Procedures in [T0 − 90, T0] (§7.1, INT-40);
* OPIOID MedicationRequests outside draftOrders (INT-41);
* AllergyIntolerance (implant materials; ordered ingredients, A-59);
* Devices (replacement; other implanted devices);
* present diagnoses in the value sets of §6.
"""
from __future__ import annotations

from datetime import date
from fractions import Fraction
from typing import Iterable, Mapping

from ..codes import CPT, RXNORM, codings, concept_texts
from ..dates import add_days, iso, parse_date, parse_instant
from ..engine import Context, Evidence, Node, Outcome, predicate
from ..evidence import PAIN_CODES, observation_date, _quantity, _usable_observation
from ..logic import Tri
from ..orders import order_codes
from ..records import ref_of, reference_str
from .common import answer, applies_condition, attested_outcome, resolution_for, short_id

TRIAL_CODES = ("62320", "62321", "62322", "62323", "62324", "62325", "62326", "62327")
PAIN_UNITS = {"{score}", "1", ""}  # §13.1: UCUM {score} or 1, or no unit
TRIAL_LOOKBACK = 365
PRE_WINDOW = 30
POST_WINDOW = (1, 7)

MALIGNANT_SETS = ("PAIN-MALIGNANT", "MALIGNANCY")  # G89.3 + any C00–C96 (§6)
NONMALIGNANT_SETS = ("PAIN-NONMALIGNANT", "PAIN-NONMALIGNANT-PATH")  # incl. G89.2*, G89.4: path only


# -- facts -----------------------------------------------------------------------
def _memo(ctx: Context, key: str, build):
    memo = ctx.shared["memo"]
    full = ("pump", key)
    if full not in memo:
        memo[full] = build()
    return memo[full]


def _status_codes(resource: Mapping, element: str) -> set[str]:
    return {c for _, c in codings(resource.get(element))}


def _performed(proc: Mapping) -> tuple[date | None, tuple | None]:
    """A Procedure's date and sort instant: ``performed[x]`` (a period's start)."""
    value = proc.get("performedDateTime")
    if value is None and isinstance(proc.get("performedPeriod"), dict):
        value = proc["performedPeriod"].get("start")
    inst = parse_instant(value)
    return (inst[0], inst) if inst else (None, None)


def completed_procedures(ctx: Context, codes: Iterable[str]) -> list[tuple[dict, date, tuple]]:
    """Completed Procedures coded (CPT) in ``codes``, with their date, latest first."""
    wanted = set(codes)
    out = []
    for proc in ctx.case.records.of_type("Procedure"):
        if proc.get("status") != "completed":
            continue
        if not {c for s, c in codings(proc.get("code")) if s == CPT} & wanted:
            continue
        d, inst = _performed(proc)
        if d is not None:
            out.append((proc, d, inst))
    return sorted(out, key=lambda t: t[2], reverse=True)


def medication_concepts(ctx: Context, resource: Mapping) -> list[Mapping]:
    """The medication of a MedicationRequest: its concept, or the referenced Medication's code and ingredients."""
    out = []
    if isinstance(resource.get("medicationCodeableConcept"), dict):
        out.append(resource["medicationCodeableConcept"])
    med = ctx.case.records.resolve(resource.get("medicationReference"), resource) if resource.get("medicationReference") else None
    if med is not None and med.get("resourceType") == "Medication":
        if isinstance(med.get("code"), dict):
            out.append(med["code"])
        for ing in med.get("ingredient") or []:
            if isinstance(ing, dict) and isinstance(ing.get("itemCodeableConcept"), dict):
                out.append(ing["itemCodeableConcept"])
    return out


def _in_sets(ctx: Context, concepts: list[Mapping], vs_id: str) -> bool:
    return any(ctx.case.valuesets.matches_concept(vs_id, c) for c in concepts)


def episode_drugs(ctx: Context) -> list[tuple[dict, list[Mapping], str | None]]:
    """Drug orders of the episode (§3.2): J2274, and MedicationRequests given intrathecally or
    epidurally or with an OPIOID or BACLOFEN ingredient.  (resource, medication concepts, HCPCS code)."""

    def build():
        members = ctx.policy.episode_members or {}
        member_codes = set(members.get("codes", []))
        routes = set(members.get("medication_routes", []))
        sets = list(members.get("medication_value_sets", []))
        out = []
        for res in ctx.case.records.draft_orders:
            codes = set(order_codes(res))
            if codes & member_codes:
                out.append((res, [], sorted(codes & member_codes)[0]))
                continue
            if res.get("resourceType") != "MedicationRequest":
                continue
            concepts = medication_concepts(ctx, res)
            given = {c for d in (res.get("dosageInstruction") if isinstance(res.get("dosageInstruction"), list) else ()) if isinstance(d, dict) for _, c in codings(d.get("route"))}
            if given & routes or any(_in_sets(ctx, concepts, vs) for vs in sets):
                out.append((res, concepts, None))
        return out

    return _memo(ctx, "episode-drugs", build)


def _drug_label(res: Mapping, concepts: list[Mapping], code: str | None) -> str:
    if code:
        return f"{ref_of(res)} {code}"
    texts = [t for c in concepts for t in concept_texts(c)]
    codes = [c for con in concepts for s, c in codings(con) if s == RXNORM]
    return f"{ref_of(res)} {texts[0] if texts else ('RxNorm ' + codes[0]) if codes else 'medication'}"


def drug_is(ctx: Context, drug: tuple, vs_id: str, params: Mapping) -> bool:
    res, concepts, code = drug
    if code:
        return vs_id in (params.get("code_value_sets") or {}).get(code, [])
    return _in_sets(ctx, concepts, vs_id)


def episode_codes(ctx: Context) -> set[str]:
    return {c for res in ctx.case.records.draft_orders for c in order_codes(res)}


def _active_allergies(ctx: Context) -> list[dict]:
    out = []
    for al in ctx.case.records.of_type("AllergyIntolerance"):
        if _status_codes(al, "clinicalStatus") & {"inactive", "resolved"}:
            continue
        if _status_codes(al, "verificationStatus") & {"refuted", "entered-in-error"}:
            continue
        out.append(al)
    return out


def _active_devices(ctx: Context) -> list[dict]:
    return [d for d in ctx.case.records.of_type("Device") if d.get("status") == "active"]


def _device_codes(device: Mapping) -> set[str]:
    return {c.upper() for _, c in codings(device.get("type"))}


def _diagnoses(ctx: Context, value_sets: Iterable[str]):
    return [d for vs in value_sets for d in ctx.case.diagnoses_in(vs)]


def _dx_evidence(found) -> list[Evidence]:
    seen, out = set(), []
    for d in found:
        if (d.ref, d.code) not in seen:
            seen.add((d.ref, d.code))
            out.append(Evidence(d.ref, f"{d.ref} {d.code}"))
    return out[:3]


def _fresh(ans) -> bool:
    return ans is not None and not ans.stale


def _stale_note(ctx: Context, item_id: str) -> str:
    ans = answer(ctx, item_id)
    return "; the answer on file is stale (authored outside T0 − 90 days to today)" if ans is not None and ans.stale else ""


# -- indication paths (§13.4) ---------------------------------------------------------
def pain_paths(ctx: Context) -> tuple[bool, bool]:
    mal = bool(_diagnoses(ctx, MALIGNANT_SETS))
    non = bool(_diagnoses(ctx, NONMALIGNANT_SETS))
    return mal, non


@applies_condition("pain_path")
def _pain_path(ctx: Context, value) -> bool:
    """A present PAIN-MALIGNANT diagnosis selects the malignant alternative, a PAIN-NONMALIGNANT one the
    non-malignant; an alternative whose indication is absent is omitted; with neither, both apply."""
    mal, non = pain_paths(ctx)
    if value == "malignant":
        return mal or not non
    if value == "nonmalignant":
        return non or not mal
    raise ValueError(f"unknown pain_path {value!r}")


# -- applicability (§3.2 APPL) ----------------------------------------------------------
@predicate("pump_opioid_for_pain")
def pump_opioid_for_pain(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """Drugs in the episode: TRUE when one has an OPIOID ingredient, else FALSE; no drug order: the attestation."""
    drugs = episode_drugs(ctx)
    if drugs:
        opioids = [d for d in drugs if drug_is(ctx, d, "OPIOID", params)]
        ev = [Evidence(ref_of(d[0]), _drug_label(*d)) for d in (opioids or drugs)[:3]]
        if opioids:
            return Outcome(Tri.TRUE, ev)
        return Outcome(Tri.FALSE, ev, note="the drugs ordered with the pump include no opioid (contract §3.2)")
    out = attested_outcome(ctx, params.get("item", short_id(ctx, node)))
    if out.value == Tri.UNKNOWN:
        out.resolution = f"an opioid drug order (J2274 or a MedicationRequest) with the pump order, or {out.resolution}"
    elif out.value == Tri.FALSE:
        out.note = "attested: the pump is not for an opioid drug for pain"
    return out


@predicate("pump_no_baclofen")
def pump_no_baclofen(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """Baclofen → NOT_APPLICABLE (CP.PHAR.149 governs intrathecal baclofen)."""
    baclofen = [d for d in episode_drugs(ctx) if drug_is(ctx, d, "BACLOFEN", params)]
    if baclofen:
        return Outcome(Tri.FALSE, [Evidence(ref_of(d[0]), _drug_label(*d)) for d in baclofen[:3]],
                       note="baclofen is ordered: refer to CP.PHAR.149 Intrathecal Baclofen")
    return Outcome(Tri.TRUE, note="no baclofen ordered")


def replacing(ctx: Context, params: Mapping) -> tuple[Tri, list[Evidence]]:
    """§3.2 Replacing: an active Device of a pump type, or ROUTE#replacement = true."""
    types = {c.upper() for c in params.get("device_types", [])}
    devices = [d for d in _active_devices(ctx) if _device_codes(d) & types]
    if devices:
        return Tri.TRUE, [Evidence(ref_of(d), f"{ref_of(d)} active implanted pump {sorted(_device_codes(d) & types)[0]}") for d in devices[:2]]
    ans = answer(ctx, params.get("item", "ROUTE#replacement"))
    if _fresh(ans):
        return Tri.of(bool(ans.value)), [Evidence(ans.source, ans.describe())]
    return Tri.FALSE, []


@predicate("pump_not_replacement")
def pump_not_replacement(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A-56: E0785/E0786, and implant codes when replacing, are NOT_APPLICABLE with MD_REVIEW."""
    role = ctx.case.role
    if role in params.get("replacement_roles", []):
        return Outcome(Tri.FALSE, [Evidence(ctx.case.order_ref, f"{ctx.case.order_ref} {ctx.case.code} (replacement)")],
                       advisories={"MD_REVIEW"}, note="replacement of an implanted pump or catheter (A-56): medical director review")
    if role in params.get("implant_roles", []):
        value, ev = replacing(ctx, params)
        if value == Tri.TRUE:
            return Outcome(Tri.FALSE, ev, advisories={"MD_REVIEW"},
                           note="the implant replaces an implanted pump (A-56): medical director review")
        return Outcome(Tri.TRUE, ev, note="not a replacement")
    return Outcome(Tri.TRUE, note="not a replacement code")


# -- routing (§3.2 ROUTE) ----------------------------------------------------------------
@predicate("pump_applicability_known")
def pump_applicability_known(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """§13.5: while applicability is UNKNOWN no section decides; the result is INSUFFICIENT_DOCUMENTATION."""
    unknown = []
    for appl in ctx.policy.applicability:
        res = ctx.evaluate_node(appl.id)
        if res is not None and res.value == Tri.UNKNOWN:
            unknown.append(res)
    if unknown:
        why = "; ".join(f"{r.resolution} ({r.id.split('/', 1)[1]})" for r in unknown if r.resolution)
        return Outcome(Tri.UNKNOWN, [e for r in unknown for e in r.evidence],
                       resolution=f"{why}: applicability decides before any section (§13.5)")
    return Outcome(Tri.TRUE)


@predicate("pump_route")
def pump_route(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """TRIAL → I, IMPLANT → II per episode; C1755 goes with the episode (I when no implant is in it)."""
    implant_codes = set(params["implant_codes"])
    found = sorted(episode_codes(ctx) & implant_codes)
    section = "II" if found else "I"
    ev = [Evidence(ctx.case.order_ref, f"{ctx.case.order_ref} {ctx.case.code}"
                   + (f"; implant episode ({', '.join(found)})" if found else "; no implant code in the episode"))]
    return Outcome(Tri.of(section == params["to"]), ev)


# -- section I -------------------------------------------------------------------------
@predicate("absence_criterion")
def absence_criterion(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A criterion worded as absence ("No ...").

    ``false_if``: a present diagnosis in these sets makes it FALSE;
    ``attest_if``: a present diagnosis (or, with ``active_device``, any active Device) leaves it to the
    attestation (→ A), UNKNOWN while unanswered;
    otherwise an answered attestation decides, and unanswered it is ``default`` (TRUE: closed world,
    INT-09; UNKNOWN where the evidence is positively required, e.g. imaging).
    """
    found = _diagnoses(ctx, params.get("false_if", []))
    if found:
        return Outcome(Tri.FALSE, _dx_evidence(found), note=f"present diagnosis in {', '.join(params['false_if'])}")
    item = params.get("item", short_id(ctx, node))
    has_item = ctx.qualify(item) in ctx.policy.items
    triggers = _dx_evidence(_diagnoses(ctx, params.get("attest_if", [])))
    if params.get("active_device"):
        triggers += [Evidence(ref_of(d), f"{ref_of(d)} active Device") for d in _active_devices(ctx)[:2]]
    ans = answer(ctx, item) if has_item else None
    if _fresh(ans):
        return Outcome(Tri.of(bool(ans.value)), triggers + [Evidence(ans.source, ans.describe())])
    if triggers:
        what = ", ".join(params.get("attest_if", [])) + (" or an active Device" if params.get("active_device") else "")
        return Outcome(Tri.UNKNOWN, triggers,
                       resolution=f"{resolution_for(ctx, item)} (a finding in {what} is present){_stale_note(ctx, item)}")
    default = params.get("default", "TRUE")
    if default == "UNKNOWN":
        return Outcome(Tri.UNKNOWN, resolution=f"{params.get('needs', 'the documentation')}, or "
                       f"{resolution_for(ctx, item)}{_stale_note(ctx, item)}")
    sets = ", ".join(list(params.get("false_if", [])) + list(params.get("attest_if", [])))
    return Outcome(Tri.TRUE, note=f"no present diagnosis in {sets}" + (" and no active Device" if params.get("active_device") else ""))


@predicate("recent_procedure_or_attestation")
def recent_procedure_or_attestation(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """§7.1 (INT-40): a completed Procedure in [T0 − days, T0] makes it TRUE; otherwise the attestation decides."""
    days = int(params["days"])
    start = add_days(ctx.case.t0, -days)
    procs = [p for p in completed_procedures(ctx, params["codes"]) if start <= p[1] <= ctx.case.t0]
    if procs:
        proc, d, _ = procs[0]
        code = sorted({c for s, c in codings(proc.get("code")) if s == CPT} & set(params["codes"]))[0]
        return Outcome(Tri.TRUE, [Evidence(ref_of(proc), f"{ref_of(proc)} CPT {code} {iso(d)}")])
    item = params.get("item", short_id(ctx, node))
    return attested_outcome(ctx, item, why_unknown=f"a completed {params.get('label', 'Procedure')} "
                            f"(CPT {', '.join(params['codes'])}) dated {iso(start)} to {iso(ctx.case.t0)}")


@predicate("opioid_wean")
def opioid_wean(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """I.A.2.h (INT-41): MME values, else the boolean answer, else no recent OPIOID MedicationRequest → TRUE."""
    item = short_id(ctx, node)
    base_ans = answer(ctx, params.get("baseline", f"{item}#baseline-mme"))
    cur_ans = answer(ctx, params.get("current", f"{item}#current-mme"))
    if _fresh(base_ans) and _fresh(cur_ans) and base_ans.value > 0:
        base, cur = Fraction(str(base_ans.value)), Fraction(str(cur_ans.value))
        ok = (base - cur) / base >= Fraction(1, 2)
        pct = float((base - cur) / base * 100)
        return Outcome(Tri.of(ok), [Evidence(base_ans.source, base_ans.describe()), Evidence(cur_ans.source, cur_ans.describe())],
                       note=f"systemic opioids weaned by {pct:.1f} % (baseline {base_ans.value:g}, current {cur_ans.value:g} mg MME/day)")
    ans = answer(ctx, item)
    if _fresh(ans):
        return Outcome(Tri.of(bool(ans.value)), [Evidence(ans.source, ans.describe())])
    t0 = ctx.case.t0
    start = add_days(t0, -365)
    recent = []
    for mr in ctx.case.records.of_type("MedicationRequest"):
        d = parse_date(mr.get("authoredOn"))
        if d is None or not (start <= d <= t0):
            continue
        if _in_sets(ctx, medication_concepts(ctx, mr), "OPIOID"):
            recent.append((mr, d))
    if not recent:
        return Outcome(Tri.TRUE, note=f"no OPIOID MedicationRequest authored {iso(start)} to {iso(t0)} (INT-41)")
    recent.sort(key=lambda t: t[1], reverse=True)
    ev = [Evidence(ref_of(mr), f"{ref_of(mr)} opioid authored {iso(d)}") for mr, d in recent[:3]]
    return Outcome(Tri.UNKNOWN, ev, resolution=(
        f"answer Questionnaire items `{ctx.qualify(item + '#baseline-mme')}` and `{ctx.qualify(item + '#current-mme')}` "
        f"(decimal, mg MME/day), or {resolution_for(ctx, item)}"))


@predicate("implant_material_allergy")
def implant_material_allergy(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """I.B.1 / II.B.1: an active allergy to an implant material (IMPLANT-MATERIAL) → TRUE; closed world."""
    vs = params["value_set"]
    found = [al for al in _active_allergies(ctx) if ctx.case.valuesets.matches_concept(vs, al.get("code"))]
    if found:
        return Outcome(Tri.TRUE, [Evidence(ref_of(al), f"{ref_of(al)} allergy: {', '.join(concept_texts(al.get('code'))) or 'coded'}") for al in found[:3]])
    return Outcome(Tri.FALSE, note=f"no active allergy to an implant material ({vs})")


@predicate("exclusion_diagnosis_or_attestation")
def exclusion_diagnosis_or_attestation(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """I.B.5 / II.B.5 (§13.2): with a present diagnosis the attestation decides (UNKNOWN unanswered);
    without one, only an attestation answered true establishes it (closed world)."""
    item = params.get("item", short_id(ctx, node))
    found = _diagnoses(ctx, params["value_sets"])
    ans = answer(ctx, item)
    if _fresh(ans):
        return Outcome(Tri.of(bool(ans.value)), _dx_evidence(found) + [Evidence(ans.source, ans.describe())])
    if found:
        return Outcome(Tri.UNKNOWN, _dx_evidence(found),
                       resolution=f"{resolution_for(ctx, item)} (a diagnosis in {', '.join(params['value_sets'])} is present){_stale_note(ctx, item)}")
    return Outcome(Tri.FALSE, note=f"no present diagnosis in {', '.join(params['value_sets'])} and not attested")


# -- section II: the trial (§5.8) ----------------------------------------------------------
def latest_trial(ctx: Context) -> tuple[dict, date, tuple] | None:
    t0 = ctx.case.t0
    start = add_days(t0, -TRIAL_LOOKBACK)
    trials = [p for p in completed_procedures(ctx, TRIAL_CODES) if start <= p[1] <= t0]
    return trials[0] if trials else None


def _pain_scores(ctx: Context) -> list[dict]:
    """Pain scores (72514-3) as {ref, value, date, instant, part_of}, units {score}, 1 or none (§13.1)."""

    def build():
        out = []
        records = ctx.case.records
        for obs in records.of_type("Observation"):
            if not _usable_observation(obs):
                continue
            if not {c for s, c in codings(obs.get("code")) if s == "http://loinc.org"} & PAIN_CODES:
                continue
            d, inst = observation_date(obs)
            q = _quantity(obs.get("valueQuantity"))
            if d is None or q is None or q.unit not in PAIN_UNITS:
                continue
            if not (add_days(ctx.case.t0, -TRIAL_LOOKBACK) <= d <= ctx.case.t0):
                continue  # §4.2: Observations dated before T0 − 365 are ignored
            part_of = set()
            part_refs = obs.get("partOf")
            for ref in part_refs if isinstance(part_refs, list) else ():
                target = records.resolve(ref, obs)
                if target is not None:
                    part_of.add(ref_of(target))
                elif reference_str(ref):
                    part_of.add(reference_str(ref))
            out.append({"ref": ref_of(obs), "value": q.value, "date": d, "instant": inst, "part_of": part_of,
                        "timed": bool(inst and inst[1])})
        return out

    return _memo(ctx, "pain-scores", build)


def trial_scores(ctx: Context, trial: tuple) -> tuple[dict | None, dict | None]:
    proc, tdate, tinst = trial
    tref = ref_of(proc)
    scores = _pain_scores(ctx)
    timed_trial = bool(tinst and tinst[1])
    pre = []
    for s in scores:
        if tref in s["part_of"] or not (add_days(tdate, -PRE_WINDOW) <= s["date"] <= tdate):
            continue
        if s["date"] == tdate and not (s["timed"] and timed_trial and s["instant"][1] < tinst[1]):
            continue  # a same-day score must be timed before the procedure
        pre.append(s)
    part = [s for s in scores if tref in s["part_of"]]
    post = part or [s for s in scores if add_days(tdate, POST_WINDOW[0]) <= s["date"] <= add_days(tdate, POST_WINDOW[1])]
    latest = lambda xs: max(xs, key=lambda s: s["instant"]) if xs else None  # noqa: E731
    return latest(pre), latest(post)


def _score_text(s: dict, what: str) -> str:
    return f"{s['ref']} {what} pain score {s['value']:g} on {iso(s['date'])}"


@predicate("trial_pain_reduction")
def trial_pain_reduction(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """II.A.x.a#pain (§5.8): (pre − post) / pre ≥ 0.50; not computable → the #pain attestation (%).

    ``malignant``: without a trial on file the result is never FALSE by absence (INT-42): UNKNOWN with
    MD_REVIEW; with ``II.NOTE#waiver`` attested it stays UNKNOWN for the medical director.
    """
    item = params.get("item", short_id(ctx, node))
    trial = latest_trial(ctx)
    t0 = ctx.case.t0
    need_trial = (f"a completed trial Procedure (CPT 62320–62327) dated {iso(add_days(t0, -TRIAL_LOOKBACK))} to {iso(t0)} "
                  f"with pain scores (LOINC 72514-3) before it (within 30 days) and after it (partOf the trial, or 1–7 days later)")
    advisories: set[str] = set()
    evidence: list[Evidence] = []
    if trial is None:
        if params.get("malignant"):
            advisories.add("MD_REVIEW")
            waiver = answer(ctx, params["waiver"]) if params.get("waiver") else None
            if _fresh(waiver) and waiver.value is True:
                return Outcome(Tri.UNKNOWN, [Evidence(waiver.source, waiver.describe())], advisories=advisories,
                               resolution=f"medical director review of the trial requirement ({ctx.qualify(params['waiver'])}); "
                                          f"or {need_trial}")
    else:
        proc, tdate, _ = trial
        evidence.append(Evidence(ref_of(proc), f"{ref_of(proc)} trial CPT {', '.join(sorted({c for s, c in codings(proc.get('code')) if s == CPT}))} on {iso(tdate)}"))
        pre, post = trial_scores(ctx, trial)
        if pre is not None and post is not None and pre["value"] > 0:
            p, q = Fraction(str(pre["value"])), Fraction(str(post["value"]))
            reduction = (p - q) / p
            evidence += [Evidence(pre["ref"], _score_text(pre, "pre-trial")), Evidence(post["ref"], _score_text(post, "post-trial"))]
            return Outcome(Tri.of(reduction >= Fraction(1, 2)), evidence,
                           note=f"pain reduced by {float(reduction) * 100:.1f} % (needs ≥ 50 %)")
        if pre is not None:
            evidence.append(Evidence(pre["ref"], _score_text(pre, "pre-trial")))
        if post is not None:
            evidence.append(Evidence(post["ref"], _score_text(post, "post-trial")))
    ans = answer(ctx, item)
    if _fresh(ans):
        return Outcome(Tri.of(ans.value >= 50), evidence + [Evidence(ans.source, ans.describe() + " % reduction")],
                       advisories=advisories)
    if trial is None:
        missing = need_trial
        if params.get("malignant"):
            missing += " (INT-42: no trial on file; the trial requirement may be reviewed by a medical director)"
    else:
        missing = ("a pre-trial pain score (72514-3, within 30 days before the trial, timed before it when the same day) "
                   "and a post-trial score (partOf the trial, or 1–7 days after it), with a pre-trial score above 0")
    return Outcome(Tri.UNKNOWN, evidence, advisories=advisories,
                   resolution=f"{missing}, or {resolution_for(ctx, item)}{_stale_note(ctx, item)}")


@predicate("md_waiver")
def md_waiver(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """II.NOTE: the trial requirement for malignant pain may be reviewed by a medical director.

    Applies only while no trial is on file and the waiver is attested; the node is then UNKNOWN (the
    medical director decides) with MD_REVIEW.  Otherwise it is omitted."""
    if latest_trial(ctx) is not None:
        return Outcome(None)
    ans = answer(ctx, params.get("item", short_id(ctx, node)))
    if not (_fresh(ans) and ans.value is True):
        return Outcome(None)
    return Outcome(Tri.UNKNOWN, [Evidence(ans.source, ans.describe())], advisories={"MD_REVIEW"},
                   resolution="medical director review of the trial requirement (advanced disease, limited survival "
                              "or high procedural risk), case by case")


@predicate("pump_safety")
def pump_safety(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A-46: on the malignant path these findings are not criteria; they raise SAFETY only (node omitted)."""
    found = _diagnoses(ctx, params.get("value_sets", []))
    flagged = bool(found)
    for item in params.get("items", []):
        ans = answer(ctx, item)
        if _fresh(ans) and ans.value is False:
            flagged = True
    if flagged:
        ctx.advisories.add("SAFETY")
    return Outcome(None)


@predicate("ordered_drug_allergy")
def ordered_drug_allergy(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """II.A.1.d / II.A.2.f (A-59): an active AllergyIntolerance to an ingredient of a drug ordered in the
    episode makes the criterion FALSE; per ingredient (RxNorm code, or its name in text/display)."""
    table: dict = params.get("ingredients") or {}
    code_ingredients: dict = params.get("code_ingredients") or {}
    ordered: list[tuple[str, set[str], set[str]]] = []  # (drug label, rxnorm codes, names)
    for res, concepts, code in episode_drugs(ctx):
        names, codes = set(), set()
        if code:
            names |= set(code_ingredients.get(code, []))
        for con in concepts:
            codes |= {c for s, c in codings(con) if s == RXNORM}
            texts = concept_texts(con)
            names |= {n for n, rx in table.items() if any(n in t for t in texts) or (rx and rx in codes)}
        codes |= {table[n] for n in names if table.get(n)}
        ordered.append((_drug_label(res, concepts, code), codes, names))
    if not ordered:
        return Outcome(Tri.TRUE, note="no drug ordered with the pump; no ordered ingredient to check")
    for al in _active_allergies(ctx):
        al_codes = {c for s, c in codings(al.get("code")) if s == RXNORM}
        al_texts = concept_texts(al.get("code"))
        for label, codes, names in ordered:
            by_code = sorted(n for n in names if table.get(n) in al_codes) or sorted(al_codes & codes)
            hit = by_code or sorted(n for n in names if any(n in t for t in al_texts))
            if hit:
                return Outcome(Tri.FALSE, [Evidence(ref_of(al), f"{ref_of(al)} allergy to {hit[0]}"),
                                           Evidence(label.split(" ")[0], label)],
                               note=f"known allergy to an ordered ingredient ({hit[0]})")
    return Outcome(Tri.TRUE, [Evidence(label.split(" ")[0], label) for label, _, _ in ordered[:3]],
                   note="no active allergy to an ordered ingredient")
