"""MassHealth MG-OXY predicates (oxygen, Appendix A).

MassHealth test validity differs from Centene's (contract §5.4, §5.5, §7.2, §7.3, §13.3), so
the oxygen-test predicates here have their own verdict, shaped like ``oxygen.py``'s.  The
scope keys, set on the MG-OXY sections, are:

``o2``                    ``masshealth``: ROOM_AIR counts; ON_O2 counts only if the
                          ``contraindicated_item`` is attested true; UNKNOWN status makes the
                          test's validity UNKNOWN (INT-32) — it is never a valid negative (§13.3)
``window``                ``{anchor: T0, days: 90}``: every test dated in [T0 − 90, T0] (II.A.2.p6)
``setting``               ``masshealth``: inpatient rule (II.A.2.p4) or chronic stable state
                          (II.A.2.p5, attested by ``stable_item``), the latter not applied when an
                          ACUTE-SHORT diagnosis is present
``stable_item``           questionnaire item for the stable state (``II.A.2.p5``)
``contraindicated_item``  questionnaire item for room air contraindicated (``II.A.2.p1#contraindicated``)

There is no performer rule.  INT-10 (no valid test → UNKNOWN) is the criterion
``mh_valid_test``, a member of the findings ANY that is UNKNOWN when no valid test is on file
and omitted otherwise; the MassHealth block therefore needs no engine ``block: true`` hook
(whose validity check, ``oxygen.no_valid_test_outcome``, knows only Centene's rules and would
wrongly count an invalid test, e.g. one taken in an emergency encounter, as a valid negative).
"""
from __future__ import annotations

from typing import Mapping

from ..codes import ICD10CM, ValueSet, ValueSets, codings
from ..dates import add_days, iso
from ..engine import Context, Evidence, Node, Outcome, Result, predicate
from ..evidence import ON_O2, ROOM_AIR, SAT, SLEEP, STABLE_CLASSES, UNKNOWN, OxygenTest
from ..logic import Tri, any_of
from ..orders import order_codes
from ..records import ref_of
from .common import answer, applies_condition, attested_outcome, resolution_for, short_id
from .oxygen import NEEDED_TEST, Candidate, Verdict, discharge_rule, memoized, qualifies, qualifying_candidates

V2_0360 = "http://terminology.hl7.org/CodeSystem/v2-0360"
COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
DEFAULT_CONTRAINDICATED_ITEM = "II.A.2.p1#contraindicated"
DEFAULT_STABLE_ITEM = "II.A.2.p5"


# -- diagnoses -------------------------------------------------------------------
_INLINE_SETS: dict[str, ValueSets] = {}


def _inline(node_id: str, include: list) -> ValueSets:
    """A value set written in a criterion's params (same shape as the value-set files)."""
    if node_id not in _INLINE_SETS:
        _INLINE_SETS[node_id] = ValueSets({node_id: ValueSet.from_data(node_id, {"title": node_id, "include": include})})
    return _INLINE_SETS[node_id]


def _diagnoses(ctx: Context, node_id: str, params: Mapping) -> list[tuple[object, str]]:
    """Present diagnoses in the params' value sets or inline ``include`` codes: (Diagnosis, label)."""
    case = ctx.case
    found = []
    for vs in params.get("value_sets") or []:
        found += [(d, vs) for d in case.diagnoses_in(vs)]
    if params.get("include"):
        sets = _inline(node_id, params["include"])
        found += [(d, d.code) for d in case.present_diagnoses if sets.contains(node_id, d.system, d.code)]
    return found


def _dx_evidence(found) -> list[Evidence]:
    seen, out = set(), []
    for d, label in found:
        if (d.ref, d.code) in seen:
            continue
        seen.add((d.ref, d.code))
        out.append(Evidence(d.ref, f"{d.ref} {d.code}" + (f" ({label})" if label != d.code else "")))
    return out[:3]


def _describe_codes(params: Mapping) -> str:
    parts = list(params.get("value_sets") or [])
    for inc in params.get("include") or []:
        parts += [str(c) for c in inc.get("codes", [])]
    return ", ".join(parts)


@predicate("mh_diagnosis")
def mh_diagnosis(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A present diagnosis in the value sets or inline codes; closed world (INT-09): absent → FALSE."""
    found = _diagnoses(ctx, node.id, params)
    if found:
        return Outcome(Tri.TRUE, _dx_evidence(found))
    return Outcome(Tri.FALSE, note=f"no present diagnosis in {_describe_codes(params)}")


@predicate("mh_diagnosis_or_attested")
def mh_diagnosis_or_attested(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A present diagnosis, or the attestation answered; unanswered → FALSE (closed world, like the coded items).

    For a listed condition that a code may not show (II.A.1.a.v "widespread" pulmonary neoplasm): the
    II.A.1 attestation remains the catch-all of the "not limited to" lists.
    """
    found = _diagnoses(ctx, node.id, params)
    if found:
        return Outcome(Tri.TRUE, _dx_evidence(found))
    item = params.get("item", short_id(ctx, node))
    ans = answer(ctx, item)
    if ans is None or ans.stale:
        return Outcome(Tri.FALSE, note=f"no present diagnosis in {_describe_codes(params)}; {item} not attested")
    return Outcome(Tri.of(bool(ans.value)), [Evidence(ans.source, ans.describe())])


@predicate("mh_diagnosis_or_attestation")
def mh_diagnosis_or_attestation(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A present diagnosis decides; otherwise the attestation (unanswered → UNKNOWN)."""
    found = _diagnoses(ctx, node.id, params)
    if found:
        return Outcome(Tri.TRUE, _dx_evidence(found))
    return attested_outcome(ctx, params.get("item", short_id(ctx, node)),
                            f"a present Condition coded in {_describe_codes(params)}")


@applies_condition("mh_diagnosis")
def _applies_diagnosis(ctx: Context, value) -> bool:
    """The node applies when a diagnosis of one of the value sets is present."""
    return any(ctx.case.has_diagnosis(vs) for vs in value)


# -- test validity -----------------------------------------------------------------
def mh_window(ctx: Context):
    w = ctx.scope.get("window") or {"anchor": "T0", "days": 90}
    anchor = ctx.case.t0 if w.get("anchor", "T0") == "T0" else ctx.case.r
    return add_days(anchor, -int(w["days"])), anchor


def mh_tests(ctx: Context) -> list[OxygenTest]:
    """Tests with a known context (INT-12); the window is a validity rule, not a filter."""
    return [t for t in ctx.case.oxygen_tests if t.context != UNKNOWN]


def mh_verdict(ctx: Context, test: OxygenTest) -> Verdict:
    return memoized(ctx, ("mh-verdict", test.ref, ctx.scope_key), lambda: _mh_verdict(ctx, test))


def _mh_verdict(ctx: Context, test: OxygenTest, with_setting: bool = True) -> Verdict:
    rules: dict = {}
    start, end = mh_window(ctx)
    if start <= test.date <= end:
        rules["window"] = (Tri.TRUE, f"{test.ref} dated {iso(test.date)}, within {iso(start)} to {iso(end)}")
    else:
        rules["window"] = (Tri.FALSE, f"{test.ref} dated {iso(test.date)} is outside the 90-day window {iso(start)} to {iso(end)}")
    rules["o2"] = _o2_rule(ctx, test)
    if with_setting:
        rules["setting"] = _setting(ctx, test)
    return Verdict(rules)


def _o2_rule(ctx: Context, test: OxygenTest) -> tuple[Tri, str]:
    """§5.4 MassHealth: room air counts; on O2 only if room air is contraindicated; unknown → UNKNOWN."""
    if test.o2 == ROOM_AIR:
        return Tri.TRUE, f"{test.ref} taken on room air"
    item = ctx.scope.get("contraindicated_item", DEFAULT_CONTRAINDICATED_ITEM)
    if test.o2 == ON_O2:
        ans = answer(ctx, item)
        if ans is None or ans.stale:
            stale = "; the answer on file is stale" if ans is not None else ""
            return Tri.UNKNOWN, f"{test.ref} was taken on oxygen: {resolution_for(ctx, item)} (room air medically contraindicated){stale}"
        if ans.value:
            return Tri.TRUE, f"{test.ref} taken on oxygen, room air medically contraindicated ({ans.describe()})"
        return Tri.FALSE, f"{test.ref} was taken on oxygen and room air is not contraindicated ({ans.describe()})"
    return Tri.UNKNOWN, (f"the oxygen status of {test.ref}: record room air (component 3151-8 = 0 L/min or 3150-0 ≤ 21 %, "
                         f"or LOINC 59410-1), or on oxygen with {resolution_for(ctx, item)}")


def _acute_short(ctx: Context) -> list:
    return ctx.case.diagnoses_in("ACUTE-SHORT")


def _setting(ctx: Context, test: OxygenTest) -> tuple[Tri, str]:
    """II.A.2.p4 (inpatient discharge rule) or II.A.2.p5 (chronic stable state; not for ACUTE-SHORT)."""
    if test.inpatient:
        return discharge_rule(ctx, test, lambda t: memoized(
            ctx, ("mh-verdict-no-setting", t.ref, ctx.scope_key), lambda: _mh_verdict(ctx, t, with_setting=False)))
    acute = _acute_short(ctx)
    if acute:
        return Tri.TRUE, f"{test.ref} stable state not required: acute, short-term condition {acute[0].code} ({acute[0].ref})"
    if test.encounter_class == "EMER":
        return Tri.FALSE, f"{test.ref} was taken in an emergency encounter (not a chronic stable state)"
    for cond in ctx.case.conditions:
        if not ctx.case.valuesets.matches_concept("ACUTE-RESP", cond.get("code")):
            continue
        vstat = {c for _, c in codings(cond.get("verificationStatus"))}
        if vstat & {"refuted", "entered-in-error"}:
            continue
        fact = ctx.case.extractor._condition_fact(cond)
        if fact.onset and add_days(test.date, -30) <= fact.onset <= test.date and not (
            fact.abatement and fact.abatement <= test.date
        ):
            return Tri.FALSE, f"{test.ref} was taken during an acute illness ({fact.ref} began {iso(fact.onset)})"
    if test.encounter_class in STABLE_CLASSES or test.performer_class == "IDTF":
        where = f"encounter class {test.encounter_class}" if test.encounter_class in STABLE_CLASSES else "an IDTF"
        return Tri.TRUE, f"{test.ref} taken in a chronic stable state ({where})"
    item = ctx.scope.get("stable_item", DEFAULT_STABLE_ITEM)
    ans = answer(ctx, item)
    if ans is not None and not ans.stale:
        return Tri.of(bool(ans.value)), f"{test.ref} stable state attested: {ans.describe()}"
    return Tri.UNKNOWN, f"{test.ref} stable state not established; {resolution_for(ctx, item)}"


def has_valid_test(ctx: Context) -> bool:
    """A test whose validity is TRUE under every MassHealth rule (a valid negative counts)."""
    return any(mh_verdict(ctx, t).value == Tri.TRUE for t in mh_tests(ctx))


def _needed(ctx: Context) -> str:
    start, end = mh_window(ctx)
    return (f"{NEEDED_TEST} dated {iso(start)} to {iso(end)}, taken on room air (or on oxygen with room air "
            f"medically contraindicated) in a chronic stable state or within two days before discharge")


def _latest_first(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: c.test.instant, reverse=True)


@predicate("mh_valid_test")
def mh_valid_test(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """INT-10 for the MassHealth findings: UNKNOWN when no valid test is on file; otherwise omitted.

    A member of the findings ANY: with no valid test the findings are UNKNOWN (not FALSE) unless
    another alternative (cluster headache) is TRUE.  A test of unknown validity, such as one whose
    room-air status is unknown, is not a valid test and so not a valid negative (§13.3).
    """
    if has_valid_test(ctx):
        return Outcome(None)
    tests = _latest_first([Candidate(t, Tri.UNKNOWN, mh_verdict(ctx, t)) for t in mh_tests(ctx)])
    reasons = [r for c in tests for r in c.verdict.reasons(only=Tri.FALSE) + c.verdict.reasons(only=Tri.UNKNOWN)]
    return Outcome(Tri.UNKNOWN, [Evidence(c.test.ref, c.test.describe()) for c in tests[:3]],
                   resolution=_needed(ctx),
                   note="; ".join(dict.fromkeys(reasons)) or "no oxygen test on file")


# -- qualifying tests ------------------------------------------------------------------
def _test_outcome(ctx: Context, params: Mapping) -> Outcome:
    cands, needs = [], {}
    for test in mh_tests(ctx):
        if params.get("kinds") and test.kind not in params["kinds"]:
            continue
        q, need = qualifies(test, params)
        if q == Tri.FALSE:
            continue
        if need:
            needs[test.ref] = need
        cands.append(Candidate(test, q, mh_verdict(ctx, test)))
    good = [c for c in cands if c.qualifies == Tri.TRUE and c.verdict.value == Tri.TRUE]
    if good:
        c = _latest_first(good)[0]
        return Outcome(Tri.TRUE, [Evidence(c.test.ref, c.test.describe())], facts=cands)
    open_ = [c for c in cands if c.verdict.value != Tri.FALSE]
    if open_:
        reasons = [r for c in open_ for r in c.verdict.reasons(only=Tri.UNKNOWN)]
        reasons += [needs[c.test.ref] for c in open_ if c.test.ref in needs]
        return Outcome(
            Tri.UNKNOWN,
            [Evidence(c.test.ref, c.test.describe()) for c in _latest_first(open_)[:3]],
            resolution="; ".join(dict.fromkeys(reasons)) or _needed(ctx),
            facts=cands,
        )
    evidence = [Evidence(c.test.ref, c.test.describe()) for c in _latest_first(cands)[:3]]
    invalid = [r for c in cands for r in c.verdict.reasons(only=Tri.FALSE)]
    return Outcome(Tri.FALSE, evidence, note="; ".join(dict.fromkeys(invalid)) or "no valid test meets the thresholds",
                   facts=cands)


@predicate("mh_oxygen_test")
def mh_oxygen_test(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A valid MassHealth test meets the thresholds (§5.5); ``age_under``: a pediatric criterion (II.A.2.d)."""
    older = None
    if "age_under" in params:
        older = ctx.case.age_at_least(params["age_under"])
        if older is True:
            return Outcome(None)  # the criterion applies under 21 only
    out = _test_outcome(ctx, params)
    if "age_under" in params and older is None and out.value == Tri.TRUE:
        why = "no birth date" if ctx.case.birth is None else "the partial birth date cannot decide"
        return Outcome(Tri.UNKNOWN, out.evidence, facts=out.facts,
                       resolution=f"record Patient.birthDate ({why}; the pediatric thresholds apply under {params['age_under']})")
    return out


@predicate("mh_sleep_drop")
def mh_sleep_drop(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """SpO2 > 5 points or PaO2 > 10 mm Hg below baseline for ≥ 5 minutes during sleep (INT-35, §13.8)."""
    cands, unknown, evidence = [], {}, []
    for test in mh_tests(ctx):
        if test.context != SLEEP or test.kind != SAT:
            continue
        spo2 = test.components.get("minutes-spo2-drop-gt-5")
        pao2 = test.components.get("minutes-pao2-drop-gt-10")  # absent: this alternative does not apply (§13.8)
        if (spo2 is not None and spo2 >= 5) or (pao2 is not None and pao2 >= 5):
            q = Tri.TRUE
        elif spo2 is None:
            q = Tri.UNKNOWN
            unknown[test.ref] = f"component `minutes-spo2-drop-gt-5` (minutes) on {test.ref}"
        else:
            q = Tri.FALSE
        minutes = f"{spo2:g}" if spo2 is not None else "not recorded"
        evidence.append(Evidence(test.ref, f"{test.ref} overnight oximetry, minutes > 5 points below baseline: {minutes}, {iso(test.date)}"))
        if q != Tri.FALSE:
            cands.append(Candidate(test, q, mh_verdict(ctx, test)))
    good = [c for c in cands if c.qualifies == Tri.TRUE and c.verdict.value == Tri.TRUE]
    if good:
        return Outcome(Tri.TRUE, [e for e in evidence if e.reference == good[0].test.ref], facts=cands)
    open_ = [c for c in cands if c.verdict.value != Tri.FALSE]
    if open_:
        reasons = [unknown[c.test.ref] for c in open_ if c.test.ref in unknown]
        reasons += [r for c in open_ for r in c.verdict.reasons(only=Tri.UNKNOWN)]
        return Outcome(Tri.UNKNOWN, evidence[:3], resolution="; ".join(dict.fromkeys(reasons)) or _needed(ctx), facts=cands)
    return Outcome(Tri.FALSE, evidence[:3], note=None if evidence else "no valid overnight study shows the fall", facts=cands)


# -- validity rules reported as criteria (II.A.2.p1, p4, p5, p6) ---------------------------
_NEEDS = {
    "o2": "a qualifying test on room air, or on oxygen with room air medically contraindicated",
    "window": "a qualifying test dated within 90 days before the order",
    "setting": "a qualifying test taken in a chronic stable state, or inpatient within two days before discharge",
}


def _block_candidates(result: Result) -> list[Candidate]:
    seen, out = set(), []
    for r in result.walk():
        for c in r.facts:
            if isinstance(c, Candidate) and c.qualifies != Tri.FALSE and c.test.ref not in seen:
                seen.add(c.test.ref)
                out.append(c)
    return out


@predicate("mh_test_rule")
def mh_test_rule(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A validity rule reported as its own criterion (II.A.2.p1, p4, p5, p6).

    Never FALSE: a test the rule invalidates is ignored (§5.5) and the test criteria decide;
    this node says which test satisfies the rule, or why a test could not be used.  It looks
    at the qualifying tests (or, when none qualifies, at every test), leaving out those
    another rule already invalidates; omitted when there is no such test, when the findings
    rest on no test (cluster headache), and p5 when an ACUTE-SHORT diagnosis is present.
    """
    rule = params["rule"]
    inpatient = params.get("inpatient")
    if rule == "setting" and inpatient is False and _acute_short(ctx):
        return Outcome(None)
    result = ctx.evaluate_node(params["block"])

    def governed(c: Candidate) -> bool:
        return inpatient is None or c.test.inpatient == inpatient

    if result.value == Tri.TRUE:
        fully = [c for c in qualifying_candidates(result) if governed(c)]
        if not fully:
            return Outcome(None)
        c = _latest_first(fully)[0]
        return Outcome(Tri.TRUE, [Evidence(c.test.ref, c.verdict.rules.get(rule, (Tri.TRUE, c.test.describe()))[1])])

    def usable(c: Candidate) -> bool:
        return governed(c) and all(v != Tri.FALSE for r, (v, _) in c.verdict.rules.items() if r != rule)

    cands = [c for c in _block_candidates(result) if usable(c)]
    if not cands:
        every = [Candidate(t, Tri.FALSE, mh_verdict(ctx, t)) for t in mh_tests(ctx)]
        cands = [c for c in every if usable(c)]
    if not cands:
        return Outcome(None)
    ok = [c for c in cands if c.verdict.rule(rule) == Tri.TRUE]
    if ok:
        c = _latest_first(ok)[0]
        return Outcome(Tri.TRUE, [Evidence(c.test.ref, c.verdict.rules[rule][1])])
    reasons = [c.verdict.rules[rule][1] for c in _latest_first(cands) if rule in c.verdict.rules]
    return Outcome(Tri.UNKNOWN, [Evidence(c.test.ref, c.test.describe()) for c in _latest_first(cands)[:3]],
                   resolution=f"{_NEEDS[rule]} ({'; '.join(dict.fromkeys(reasons))})")


# -- prescription (II.A.2.p2, p3) ------------------------------------------------------------
def _resolve(ctx: Context, ref: object, container: Mapping) -> dict | None:
    return ctx.case.records.resolve(ref, container)


@predicate("mh_prescriber")
def mh_prescriber(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """§3.4: the requester Practitioner's v2-0360 qualification (directly or via PractitionerRole)."""
    order = ctx.case.order
    allowed = set(params.get("allowed") or ["MD", "DO", "NP", "PA", "CNS"])
    res = _resolve(ctx, order.get("requester"), order)
    prac = res
    if res is not None and res.get("resourceType") == "PractitionerRole":
        prac = _resolve(ctx, res.get("practitioner"), res)
    if prac is None or prac.get("resourceType") != "Practitioner":
        return Outcome(Tri.TRUE, note="no requester qualification recorded")
    codes = []
    for q in (prac.get("qualification") if isinstance(prac.get("qualification"), list) else ()):
        if isinstance(q, dict):
            codes += [c for s, c in codings(q.get("code")) if s == V2_0360]
    ref = ref_of(prac)
    if not codes:
        return Outcome(Tri.TRUE, [Evidence(ref, f"{ref} (no qualification recorded)")])
    ok = [c for c in codes if c in allowed]
    if ok:
        return Outcome(Tri.TRUE, [Evidence(ref, f"{ref} qualification {ok[0]}")])
    return Outcome(Tri.FALSE, [Evidence(ref, f"{ref} qualification {', '.join(codes)}")],
                   note="the prescriber is not a physician, nurse practitioner, physician assistant or clinical nurse specialist")


def _unit(q: object) -> str | None:
    if not isinstance(q, dict):
        return None
    unit = q.get("code") if isinstance(q.get("code"), str) else q.get("unit")
    return unit.strip() if isinstance(unit, str) else None


def _param_units(order: Mapping) -> set[str]:
    units = set()
    for p in order.get("parameter") or []:
        if not isinstance(p, dict):
            continue
        units.add(_unit(p.get("valueQuantity")))
        rng = p.get("valueRange") if isinstance(p.get("valueRange"), dict) else {}
        units.add(_unit(rng.get("high")))
    return {u for u in units if u}


@predicate("mh_prescription_content")
def mh_prescription_content(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """§3.4 II.A.2.p3: diagnosis, flow rate (L/min) and frequency/duration (h/d or timing); else UNKNOWN."""
    order = ctx.case.order
    ref = ctx.case.order_ref
    has_dx = any(s == ICD10CM for concept in order.get("reasonCode") or [] for s, _ in codings(concept)) or bool(
        order.get("reasonReference"))
    units = _param_units(order)
    has_flow = "L/min" in units
    has_freq = "h/d" in units or isinstance(order.get("occurrenceTiming"), dict)
    missing = []
    if not has_dx:
        missing.append("the diagnosis (an ICD-10-CM reasonCode or a reasonReference)")
    if not has_flow:
        missing.append("the oxygen flow rate (a parameter in UCUM L/min)")
    if not has_freq:
        missing.append("the frequency/duration (a parameter in UCUM h/d, or occurrenceTiming)")
    if not missing:
        return Outcome(Tri.TRUE, [Evidence(ref, f"{ref} specifies the diagnosis, flow rate and frequency/duration")])
    return Outcome(Tri.UNKNOWN, [Evidence(ref, ref)], resolution=f"on the order {ref}: " + "; ".join(missing))


# -- noncoverage (II.B) ----------------------------------------------------------------------
def _hypoxemia(ctx: Context, nodes: list[str]) -> Result | None:
    results = [r for r in (ctx.evaluate_node(n) for n in nodes) if r is not None]
    if not results:
        return None
    value = any_of(r.value for r in results)
    return Result("hypoxemia", value, "qualifying hypoxemia", "any", children=results)


def _first_resolution(result: Result) -> str | None:
    for r in result.walk():
        if r.value == Tri.UNKNOWN and r.resolution:
            return r.resolution
    return None


@predicate("mh_attested_exclusion")
def mh_attested_exclusion(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """An exclusion only an attestation establishes (§13.2): unanswered or stale → FALSE; true → applies.

    ``without_hypoxemia``: it applies only when the test criteria are not met (INT-39).
    """
    item = params.get("item", short_id(ctx, node))
    ans = answer(ctx, item)
    if ans is None or ans.stale:
        note = "unanswered (closed world)" if ans is None else "the answer on file is stale (closed world)"
        return Outcome(Tri.FALSE, [Evidence(ans.source, ans.describe())] if ans else [], note=note)
    ev = [Evidence(ans.source, ans.describe())]
    if not ans.value:
        return Outcome(Tri.FALSE, ev)
    if params.get("without_hypoxemia"):
        hyp = _hypoxemia(ctx, params["without_hypoxemia"])
        if hyp is not None:
            value = ~hyp.value
            return Outcome(value, ev, resolution=_first_resolution(hyp) if value == Tri.UNKNOWN else None,
                           note=f"qualifying hypoxemia is {hyp.value.value}")
    return Outcome(Tri.TRUE, ev)


@predicate("mh_without_hypoxemia")
def mh_without_hypoxemia(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """II.B.2–4: the condition is the indication and there is no qualifying hypoxemia (INT-22)."""
    case = ctx.case
    found = case.diagnoses_in(params["value_set"], case.indication_diagnoses)
    if not found:
        return Outcome(Tri.FALSE, note=f"{params['value_set']} is not the indication")
    unless = [d for vs in params.get("unless_present", []) for d in case.diagnoses_in(vs)]
    if unless:
        return Outcome(Tri.FALSE, [Evidence(unless[0].ref, f"{unless[0].ref} {unless[0].code}")])
    ev = [Evidence(found[0].ref, f"{found[0].ref} {found[0].code} ({params['value_set']})")]
    hyp = _hypoxemia(ctx, params["hypoxemia"])
    if hyp is None:
        return Outcome(Tri.TRUE, ev)
    value = ~hyp.value
    return Outcome(value, ev, resolution=_first_resolution(hyp) if value == Tri.UNKNOWN else None,
                   note=f"qualifying hypoxemia is {hyp.value.value}")


@predicate("mh_cluster_headache_exclusion")
def mh_cluster_headache_exclusion(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """II.B.9 (§13.6): cluster headache is the only indication and ICHD-3 A–E are not all met."""
    case = ctx.case
    pool = case.indication_diagnoses
    found = case.diagnoses_in(params["value_set"], pool)
    others = [d for vs in params.get("unless", []) for d in case.diagnoses_in(vs, pool)]
    if not found:
        return Outcome(Tri.FALSE, note="cluster headache is not the indication")
    if others:
        return Outcome(Tri.FALSE, [Evidence(others[0].ref, f"{others[0].ref} {others[0].code}")],
                       note="cluster headache is not the only indication")
    ev = [Evidence(found[0].ref, f"{found[0].ref} {found[0].code} ({params['value_set']})")]
    crit = ctx.evaluate_node(params["criteria"])
    if crit is None:
        return Outcome(Tri.FALSE, ev)
    value = ~crit.value
    failed = [e for r in crit.walk() if not r.children and r.value == Tri.FALSE for e in r.evidence]
    return Outcome(value, ev + failed[:2], resolution=_first_resolution(crit) if value == Tri.UNKNOWN else None,
                   note=f"ICHD-3 criteria {params['criteria']} are {crit.value.value}")


@predicate("mh_sleep_only_portable")
def mh_sleep_only_portable(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """II.B.7: a portable system when the member qualifies solely on studies during sleep."""
    result = ctx.evaluate_node(params["block"])
    cluster = ctx.evaluate_node(params["cluster"]) if params.get("cluster") else None
    if cluster is not None and cluster.value == Tri.TRUE:
        return Outcome(Tri.FALSE, note="the member qualifies under the cluster-headache criteria")
    if result.value == Tri.TRUE:
        good = qualifying_candidates(result)
        awake = [c for c in good if c.test.context != SLEEP]
        if awake:
            return Outcome(Tri.FALSE, [Evidence(awake[0].test.ref, awake[0].test.describe())])
        if not good:
            return Outcome(Tri.FALSE)
        ev = list({c.test.ref: Evidence(c.test.ref, c.test.describe()) for c in _latest_first(good)}.values())[:2]
        maybe = [c for c in _block_candidates(result) if c.test.context != SLEEP and c.verdict.value != Tri.FALSE]
        if maybe:
            return Outcome(Tri.UNKNOWN, ev, resolution=f"whether {maybe[0].test.ref} (awake) is a valid qualifying test: "
                           + "; ".join(dict.fromkeys(r for c in maybe for r in c.verdict.reasons(only=Tri.UNKNOWN))))
        return Outcome(Tri.TRUE, ev, note="the only qualifying studies were obtained during sleep")
    if result.value == Tri.UNKNOWN:
        open_ = [c for c in _block_candidates(result) if c.verdict.value != Tri.FALSE]
        if open_ and all(c.test.context == SLEEP for c in open_):
            return Outcome(Tri.UNKNOWN, [Evidence(c.test.ref, c.test.describe()) for c in open_[:2]],
                           resolution="a qualifying test at rest or during exercise (a portable system is not covered "
                                      "when the member qualifies solely on studies during sleep)")
    return Outcome(Tri.FALSE)


# -- Appendix A --------------------------------------------------------------------------------
def _device_codes(resource: Mapping) -> set[str]:
    return set(order_codes(resource))


@predicate("mh_companion_order")
def mh_companion_order(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """K0738 must be used with E1390: in this draftOrders, or an active DeviceRequest."""
    code = params["code"]
    records = ctx.case.records
    own = ctx.case.order_ref
    for o in records.draft_orders:
        if ref_of(o) != own and code in _device_codes(o):
            return Outcome(Tri.TRUE, [Evidence(ref_of(o), f"{ref_of(o)} {code} (draft order)")])
    for dr in records.of_type("DeviceRequest"):
        if dr.get("status") == "active" and code in _device_codes(dr):
            return Outcome(Tri.TRUE, [Evidence(ref_of(dr), f"{ref_of(dr)} {code} (active)")])
    return Outcome(Tri.FALSE, note=f"no {code} in draftOrders and no active {code} DeviceRequest")


@predicate("mh_single_portable")
def mh_single_portable(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """Only one portable system: no other active portable DeviceRequest unless the order's priorRequest names it."""
    records = ctx.case.records
    portable = set(params["codes"])
    drafts = {ref_of(o) for o in records.draft_orders}
    prior = set()
    for text, res in ctx.case.prior_requests:
        if res is not None:
            prior.add(ref_of(res))
        parts = text.rstrip("/").split("/")
        if len(parts) >= 2:
            prior.add(f"{parts[-2]}/{parts[-1]}")
    others = [
        dr for dr in records.of_type("DeviceRequest")
        if dr.get("status") == "active" and _device_codes(dr) & portable
        and ref_of(dr) not in drafts and ref_of(dr) not in prior
    ]
    if others:
        dr = others[0]
        code = sorted(_device_codes(dr) & portable)[0]
        return Outcome(Tri.FALSE, [Evidence(ref_of(dr), f"{ref_of(dr)} {code} (active portable system)")],
                       note="another portable oxygen system is already active")
    return Outcome(Tri.TRUE, note="no other active portable oxygen DeviceRequest")


# -- applicability ------------------------------------------------------------------------------
@predicate("mh_plan_not_excluded")
def mh_plan_not_excluded(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """§2.2 item 4: FALSE when a Coverage class of type plan has value or name ACPP, MCO, ICO, SCO or PACE."""
    cov = ctx.case.coverage or {}
    ref = ref_of(cov) if cov else "Coverage"
    plans = {p.upper() for p in params["plans"]}
    for klass in (cov.get("class") if isinstance(cov.get("class"), list) else ()):
        if not isinstance(klass, dict):
            continue
        ktype = klass.get("type") if isinstance(klass.get("type"), dict) else {}
        type_codes = {c for s, c in codings(ktype) if s == COVERAGE_CLASS}
        type_codes |= {c.get("code") for c in (ktype.get("coding") if isinstance(ktype.get("coding"), list) else ())
                       if isinstance(c, dict) and "system" not in c}
        if "plan" not in type_codes:
            continue
        for key in ("value", "name"):
            val = klass.get(key)
            if isinstance(val, str) and val.strip().upper() in plans:
                return Outcome(Tri.FALSE, [Evidence(ref, f"{ref} class plan {key} {val}")],
                               note="MassHealth-contracted plan: its own medical policies govern")
    return Outcome(Tri.TRUE, [Evidence(ref, f"{ref} MassHealth (no ACPP, MCO, ICO, SCO or PACE plan class)")])


# -- informational nodes and advisories -----------------------------------------------------------
@predicate("mh_informational")
def mh_informational(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """Policy text kept in the outline but not a separate criterion: encoded by the nodes it names."""
    return Outcome(None, note=f"encoded by {', '.join(params.get('see') or [])}")


@predicate("mh_spo2_disparity")
def mh_spo2_disparity(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """SPO2_DISPARITY (§10.4): a valid MassHealth pulse-oximetry value of 88–92 % was used. Never a criterion."""
    low, high = params.get("low", 88), params.get("high", 92)
    for t in mh_tests(ctx):
        if t.kind == SAT and low <= t.value <= high and mh_verdict(ctx, t).value == Tri.TRUE:
            ctx.advisories.add("SPO2_DISPARITY")
            break
    return Outcome(None)


def _would_be_supported(ctx: Context, sections: list[str]) -> bool:
    results = [r for r in (ctx.evaluate_node(s) for s in sections) if r is not None]
    return bool(results) and all(r.value == Tri.TRUE for r in results)


def _acute(ctx: Context) -> bool:
    """Acute in nature: an ACUTE-SHORT diagnosis, or coverage resting on cluster headache alone (II.C, see II.A.1.d)."""
    if _acute_short(ctx):
        return True
    policy = ctx.policy
    cluster = ctx.evaluate_node("II.A.2.c") if policy.has_node("II.A.2.c") else None
    if cluster is None or cluster.value != Tri.TRUE:
        return False
    others = [ctx.evaluate_node(n) for n in ("II.A.2.a", "II.A.2.b", "II.A.2.d") if policy.has_node(n)]
    return not any(r is not None and r.value == Tri.TRUE for r in others)


@predicate("mh_authorization_length")
def mh_authorization_length(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """II.C: AUTH_12M (chronic) or AUTH_LT6M (acute) when the order is SUPPORTED. Never a criterion."""
    if _would_be_supported(ctx, params["sections"]):
        acute = _acute(ctx)
        if (params["term"] == "acute") == acute:
            ctx.advisories.add(params["advisory"])
    return Outcome(None)
