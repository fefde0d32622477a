"""Home-oxygen predicates: blood-gas tests, their validity, and the findings around them.

Validity (contract §5.5, §7) depends on the node's *scope*, set in the policy
document on the section that needs it:

``performer``  ``centene``: DME-obtained → invalid, unknown performer → unknown (I.C)
``setting``    ``centene``: inpatient discharge rule (I.D.1) or stable state (I.D.2)
``o2``         ``centene``: on O2 never qualifies, unknown presumed room air (INT-16)
``window``     ``{anchor: R|T0, days: N}``: test dated in [anchor − N, anchor]
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping

from ..dates import add_days, iso
from ..engine import Context, Evidence, Node, Outcome, Result, predicate
from ..evidence import (
    EXERCISE, ON_O2, PAO2, REST, ROOM_AIR, SAT, SLEEP, STABLE_CLASSES, UNKNOWN, OxygenTest,
)
from ..logic import Tri, all_of
from .common import answer, attested_outcome, resolution_for, short_id

NEEDED_TEST = (
    "an Observation of SpO2 (LOINC 59408-5) or PaO2 (LOINC 2703-7) with its context "
    "(rest, exercise or sleep) and room-air status"
)


@dataclass
class Verdict:
    """A test's validity: per rule a truth value and the reason."""

    rules: dict  # rule -> (Tri, reason); not changed once made

    @cached_property
    def value(self) -> Tri:
        return all_of(v for v, _ in self.rules.values())

    def rule(self, name: str) -> Tri:
        return self.rules.get(name, (Tri.TRUE, ""))[0]

    def reasons(self, *, only: Tri | None = None) -> list[str]:
        return [r for v, r in self.rules.values() if r and (only is None or v == only)]


@dataclass
class Candidate:
    test: OxygenTest
    qualifies: Tri
    verdict: Verdict


# -- validity --------------------------------------------------------------
def window_of(ctx: Context):
    w = ctx.scope.get("window")
    if not w:
        return None
    anchor = ctx.case.r if w.get("anchor", "R") == "R" else ctx.case.t0
    return add_days(anchor, -int(w["days"])), anchor


def tests_in_scope(ctx: Context, contexts: tuple | list | None = None) -> list[OxygenTest]:
    """Tests with a known context (INT-12), within the scope's window if any; of ``contexts`` only when
    given. In record order; computed once per window and contexts for the order (do not mutate)."""
    w = window_of(ctx)
    key = ("in-scope", w, tuple(contexts) if contexts is not None else None)
    memo = ctx.shared["memo"]
    hit = memo.get(key)
    if hit is None:
        if contexts is not None:
            hit = [t for t in tests_in_scope(ctx) if t.context in contexts]
        else:
            hit = [t for t in ctx.case.oxygen_tests if t.context != UNKNOWN]
            if w:
                hit = [t for t in hit if w[0] <= t.date <= w[1]]
        memo[key] = hit
    return hit


def memoized(ctx: Context, key: tuple, compute):
    """A value computed once per order evaluation (``ctx.shared["memo"]``): validity verdicts are asked
    for per test by many criteria, and by the discharge rule per test of the same stay."""
    memo = ctx.shared["memo"]
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def verdict(ctx: Context, test: OxygenTest) -> Verdict:
    return memoized(ctx, ("verdict", test.ref, ctx.scope_key), lambda: _verdict(ctx, test))


def _verdict(ctx: Context, test: OxygenTest, with_setting: bool = True) -> Verdict:
    rules: dict = {}
    o2_rule = ctx.scope.get("o2", "centene")
    if o2_rule == "centene" and test.o2 == ON_O2:
        rules["o2"] = (Tri.FALSE, f"{test.ref} was taken on oxygen")
    if ctx.scope.get("performer") == "centene":
        if test.performer_class == "DME":
            rules["performer"] = (Tri.FALSE, f"{test.ref} was obtained by a DME supplier")
        elif test.performer_class == "UNKNOWN":
            rules["performer"] = (Tri.UNKNOWN, f"{test.ref} has no resolvable performer")
        else:
            rules["performer"] = (Tri.TRUE, "")
    if with_setting and ctx.scope.get("setting") == "centene":
        rules["setting"] = _setting(ctx, test)
    return Verdict(rules)


def _setting(ctx: Context, test: OxygenTest) -> tuple[Tri, str]:
    """I.D.1 (inpatient discharge rule) or I.D.2 (chronic stable state)."""
    if test.inpatient:
        return discharge_rule(ctx, test, lambda t: memoized(
            ctx, ("verdict-no-setting", t.ref, ctx.scope_key), lambda: _verdict(ctx, t, with_setting=False)))
    if test.encounter_class == "EMER":
        return Tri.FALSE, f"{test.ref} was taken in an emergency encounter (not a chronic stable state)"
    for fact in _acute_respiratory(ctx):
        if fact.onset and add_days(test.date, -30) <= fact.onset <= test.date and not (
            fact.abatement and fact.abatement <= test.date
        ):
            return Tri.FALSE, f"{test.ref} was taken during an acute illness ({fact.ref} began {iso(fact.onset)})"
    if test.encounter_class in STABLE_CLASSES or test.performer_class == "IDTF":
        where = f"encounter class {test.encounter_class}" if test.encounter_class in STABLE_CLASSES else "an IDTF"
        return Tri.TRUE, f"{test.ref} taken in a chronic stable state ({where})"
    item = ctx.scope.get("stable_item", "I.D.2")
    ans = answer(ctx, item)
    if ans is not None and not ans.stale:
        return Tri.of(bool(ans.value)), f"{test.ref} stable state attested: {ans.describe()}"
    return Tri.UNKNOWN, f"{test.ref} stable state not established; {resolution_for(ctx, item)}"


def tests_of_encounter(ctx: Context, encounter_ref: str | None) -> list[OxygenTest]:
    """The case's tests by encounter reference, in record order (once per order: the discharge rule
    compares each inpatient test with the others of its stay)."""
    memo = ctx.shared["memo"]
    index = memo.get("by-encounter")
    if index is None:
        index = {}
        for t in ctx.case.oxygen_tests:
            index.setdefault(t.encounter_ref, []).append(t)
        memo["by-encounter"] = index
    return index.get(encounter_ref, [])


def discharge_rule(ctx: Context, test: OxygenTest, other_rules) -> tuple[Tri, str]:
    """The inpatient discharge rule (Centene I.D.1, MassHealth II.A.2.p4): dated within two days
    before discharge, and the latest test of its context in the stay among those the payer's other
    validity rules (``other_rules(t)``, a Verdict without the setting rule) do not reject."""
    discharge = test.encounter_end
    if discharge is None:
        discharge = ctx.case.t0
        ctx.advisories.add("PROVISIONAL_DISCHARGE")
    if not (add_days(discharge, -2) <= test.date <= discharge):
        return Tri.FALSE, f"{test.ref} is not within two days before discharge ({iso(discharge)})"
    peers = [
        t for t in tests_of_encounter(ctx, test.encounter_ref)
        if t.context == test.context
        and other_rules(t).value != Tri.FALSE
        and add_days(discharge, -2) <= t.date <= discharge
    ]
    if any(t.instant > test.instant for t in peers):
        return Tri.FALSE, f"{test.ref} is not the latest test of its context in the stay"
    return Tri.TRUE, f"{test.ref} inpatient, within two days before discharge {iso(discharge)}"


def _acute_respiratory(ctx: Context) -> list:
    """ACUTE-RESP Conditions (not refuted), once per case: the stable-state rule reads them per test."""
    memo = ctx.shared["memo"]
    if "acute-resp" not in memo:
        facts = []
        for cond in ctx.case.conditions:
            if not ctx.case.valuesets.matches_concept("ACUTE-RESP", cond.get("code")):
                continue
            vs = cond.get("verificationStatus")
            vstat = {c.get("code") for c in vs.get("coding") or [] if isinstance(c, dict)} if isinstance(vs, dict) else set()
            if not vstat & {"refuted", "entered-in-error"}:
                facts.append(ctx.case.extractor._condition_fact(cond))
        memo["acute-resp"] = facts
    return memo["acute-resp"]


# -- qualification -----------------------------------------------------------
def qualifies(test: OxygenTest, params: Mapping) -> tuple[Tri, str | None]:
    """Whether a test meets a leaf's thresholds; UNKNOWN with what is missing."""
    if test.context not in params["contexts"]:
        return Tri.FALSE, None
    if test.kind == SAT:
        limit = params.get("sat_max")
        if limit is None:
            return Tri.FALSE, None
        if test.context == SLEEP and "sleep_minutes" in params:
            comp = params["sleep_minutes"]["component"]
            need = params["sleep_minutes"].get("at_least", 5.0)
            minutes = test.components.get(comp)
            if minutes is not None:
                return Tri.of(minutes >= need), None
            if test.value > limit:
                return Tri.FALSE, None
            return Tri.UNKNOWN, f"the duration: component `{comp}` (minutes) on {test.ref}; a nadir alone cannot prove {need:g} minutes"
        return Tri.of(test.value <= limit), None
    low, high = params.get("pao2_above"), params.get("pao2_max")
    if high is None:
        return Tri.FALSE, None
    ok = test.value <= high and (low is None or test.value > low)
    if ok and test.context == SLEEP and "sleep_minutes" in params:
        return Tri.UNKNOWN, f"the duration of PaO2 ≤ {high:g} mm Hg during sleep on {test.ref}"
    return Tri.of(ok), None


def _latest_first(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: c.test.instant, reverse=True)


@predicate("oxygen_test")
def oxygen_test(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A valid test meets the thresholds (contract §5.5: valid and qualifying → TRUE)."""
    cands = []
    missing = []
    kinds = params.get("kinds")
    for test in tests_in_scope(ctx, params["contexts"]):  # qualifies() is FALSE for other contexts
        if kinds and test.kind not in kinds:
            continue
        q, need = qualifies(test, params)
        if q == Tri.FALSE:
            continue
        if need:
            missing.append(need)
        cands.append(Candidate(test, q, verdict(ctx, test)))
    good = [c for c in cands if c.qualifies == Tri.TRUE and c.verdict.value == Tri.TRUE]
    if good:
        c = max(good, key=lambda c: c.test.instant)  # the latest; the first of equals, as a stable sort gives
        return Outcome(Tri.TRUE, [Evidence(c.test.ref, c.test.describe())], facts=cands)
    open_ = [c for c in cands if c.verdict.value != Tri.FALSE]
    if open_:
        reasons = [r for c in open_ for r in c.verdict.reasons(only=Tri.UNKNOWN)] + missing
        return Outcome(
            Tri.UNKNOWN,
            [Evidence(c.test.ref, c.test.describe()) for c in _latest_first(open_)[:3]],
            resolution="; ".join(dict.fromkeys(reasons)) or NEEDED_TEST,
            facts=cands,
        )
    invalid = [r for c in cands for r in c.verdict.reasons(only=Tri.FALSE)]
    return Outcome(
        Tri.FALSE,
        [Evidence(c.test.ref, c.test.describe()) for c in _latest_first(cands)[:3]],
        note="; ".join(dict.fromkeys(invalid)) or "no test meets the thresholds",
        facts=cands,
    )


def no_valid_test_outcome(ctx: Context, node: Node) -> Outcome | None:
    """INT-10: a block with no valid test is UNKNOWN, not FALSE."""
    valid = [t for t in tests_in_scope(ctx) if verdict(ctx, t).value == Tri.TRUE and _valid_negative(ctx, t)]
    if valid:
        return None
    w = window_of(ctx)
    where = f" dated {iso(w[0])} to {iso(w[1])}" if w else ""
    return Outcome(Tri.UNKNOWN, resolution=f"{NEEDED_TEST}{where}, obtained as the policy requires",
                   note="no valid oxygen test on file")


def _valid_negative(ctx: Context, test: OxygenTest) -> bool:
    # MassHealth (§13.3): a test of unknown room-air status cannot be a valid negative.
    return not (ctx.scope.get("o2") == "masshealth" and test.o2 != ROOM_AIR)


@predicate("baseline_below")
def baseline_below(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """Pediatric baseline: the latest valid awake resting value (INT-21) below a limit."""
    kind = params["kind"]
    tests = [t for t in tests_in_scope(ctx) if t.kind == kind and t.context == REST]
    valid = [t for t in tests if verdict(ctx, t).value == Tri.TRUE]
    if not valid:
        if any(verdict(ctx, t).value == Tri.UNKNOWN for t in tests):
            return Outcome(Tri.UNKNOWN, resolution=f"a valid resting {'SpO2' if kind == SAT else 'PaO2'} test")
        return Outcome(Tri.FALSE, note="no valid resting test")
    latest = max(valid, key=lambda t: t.instant)
    return Outcome(Tri.of(latest.value < params["below"]), [Evidence(latest.ref, latest.describe())],
                   facts=[Candidate(latest, Tri.of(latest.value < params["below"]), verdict(ctx, latest))])


@predicate("sleep_drop")
def sleep_drop(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """I.B.1.c: SpO2 > 5 points or PaO2 > 10 mm Hg below baseline for ≥ 5 minutes."""
    cands, unknown, evidence = [], [], []
    for test in tests_in_scope(ctx):
        if test.context != SLEEP or test.kind != SAT:
            continue
        v = verdict(ctx, test)
        spo2 = test.components.get("minutes-spo2-drop-gt-5")
        pao2 = test.components.get("minutes-pao2-drop-gt-10")  # absent: alternative does not apply (§13.8)
        if (spo2 is not None and spo2 >= 5) or (pao2 is not None and pao2 >= 5):
            q = Tri.TRUE
        elif spo2 is None:
            q = Tri.UNKNOWN
            unknown.append(f"component `minutes-spo2-drop-gt-5` (minutes) on {test.ref}")
        else:
            q = Tri.FALSE
        minutes = f"{spo2:g}" if spo2 is not None else "not recorded"
        evidence.append(Evidence(test.ref, f"{test.ref} overnight oximetry, minutes > 5 points below baseline: {minutes}, {iso(test.date)}"))
        if q != Tri.FALSE:
            cands.append(Candidate(test, q, v))
    good = [c for c in cands if c.qualifies == Tri.TRUE and c.verdict.value == Tri.TRUE]
    if good:
        return Outcome(Tri.TRUE, [e for e in evidence if e.reference == good[0].test.ref], facts=cands)
    if any(c.verdict.value != Tri.FALSE for c in cands):
        reasons = unknown + [r for c in cands for r in c.verdict.reasons(only=Tri.UNKNOWN)]
        return Outcome(Tri.UNKNOWN, evidence[:3], resolution="; ".join(reasons) or NEEDED_TEST, facts=cands)
    return Outcome(Tri.FALSE, evidence[:3], facts=cands)


def _signs(ctx: Context) -> list[Evidence]:
    case = ctx.case
    found = []
    for vs in ("PH", "COR-PULMONALE", "ERYTHRO"):
        found += [Evidence(d.ref, f"{d.ref} {d.code} ({vs})") for d in case.diagnoses_in(vs)]
    hct = latest_hematocrit(ctx)
    if hct and hct.value > 56.0:
        found.append(Evidence(hct.ref, f"{hct.ref} hematocrit {hct.value:g} %, {iso(hct.date)}"))
    found += [Evidence(p.ref, f"{p.ref} P wave {p.value:g} mm, {iso(p.date)}") for p in case.extractor.p_waves() if p.value > 3.0]
    return found


@predicate("p_wave_above")
def p_wave_above(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """P pulmonale on EKG: a P wave above the limit in II, III or aVF (closed world: none → FALSE)."""
    limit = params.get("mm", 3.0)
    waves = [p for p in ctx.case.extractor.p_waves() if p.value > limit]
    if waves:
        p = waves[0]
        return Outcome(Tri.TRUE, [Evidence(p.ref, f"{p.ref} P wave {p.value:g} mm, {iso(p.date)}")])
    return Outcome(Tri.FALSE, note=f"no P wave > {limit:g} mm recorded")


@predicate("hypoxemia_signs")
def hypoxemia_signs(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """Signs or symptoms reasonably attributable to hypoxemia (INT-28)."""
    signs = _signs(ctx)
    if signs:
        return Outcome(Tri.TRUE, signs[:3])
    return attested_outcome(ctx, params.get("item", short_id(ctx, node)),
                            "a present PH, cor pulmonale or erythrocytosis diagnosis, hematocrit > 56 %, or P wave > 3 mm")


@predicate("improvement_on_o2")
def improvement_on_o2(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """INT-17: an on-O2 exercise value higher than the lowest room-air one, same session."""
    found = improvement_pair(ctx.case.oxygen_tests)
    if found is not None:
        improved, room_air, on_o2 = found
        evidence = [Evidence(room_air.ref, room_air.describe()), Evidence(on_o2.ref, on_o2.describe())]
        if improved:
            return Outcome(Tri.TRUE, evidence)
        return Outcome(Tri.FALSE, evidence, note="the on-O2 value is not higher than the room-air value")
    return attested_outcome(ctx, params.get("item", short_id(ctx, node)),
                            "an on-O2 exercise SpO2 or PaO2 in the same session as the room-air exercise test")


def improvement_pair(tests: list[OxygenTest]) -> tuple[bool, OxygenTest, OxygenTest] | None:
    """INT-17 over the exercise tests: pairs (room-air r, on-O2 o) of a kind in one session (same
    Procedure or same date), in record order of r then o. The first pair whose o is higher than the
    lowest room-air value of o's session gives (True, that lowest, o); none higher gives (False, r, o)
    of the first pair; no pair, None. Pairs are found through indexes, not by comparing every test with
    every other (tests/test_properties.py checks it against the pairwise definition)."""
    tests = [t for t in tests if t.context == EXERCISE]
    room = [t for t in tests if t.o2 != ON_O2]
    on = [t for t in tests if t.o2 == ON_O2]
    on_at, room_at = _session_index(on), _session_index(room)
    first_pair = None
    lowest_for: dict[int, OxygenTest] = {}
    for r in room:
        for i in _same_session(on_at, r):
            o = on[i]
            if first_pair is None:
                first_pair = (r, o)
            if i not in lowest_for:
                lowest_for[i] = min((room[j] for j in _same_session(room_at, o)), key=lambda t: t.value)
            if o.value > lowest_for[i].value:
                return True, lowest_for[i], o
    return (False, *first_pair) if first_pair else None


def _session_index(tests: list[OxygenTest]) -> dict:
    """(kind, date) and (kind, session) → positions in ``tests``, for ``OxygenTest.same_session``."""
    index: dict = {}
    for i, t in enumerate(tests):
        index.setdefault((t.kind, "date", t.date), []).append(i)
        if t.session:
            index.setdefault((t.kind, "session", t.session), []).append(i)
    return index


def _same_session(index: dict, test: OxygenTest) -> list[int]:
    """Positions, in order, of the indexed tests of ``test``'s kind in its session."""
    hits = index.get((test.kind, "date", test.date), [])
    if test.session and (test.kind, "session", test.session) in index:
        hits = sorted(set(hits) | set(index[(test.kind, "session", test.session)]))
    return hits


@predicate("both_or_attestation")
def both_or_attestation(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """HF and EDEMA: both present → TRUE; one → the attestation decides; none → FALSE."""
    case = ctx.case
    found = {vs: case.diagnoses_in(vs) for vs in params["value_sets"]}
    evidence = [Evidence(d.ref, f"{d.ref} {d.code} ({vs})") for vs, ds in found.items() for d in ds[:1]]
    present = [vs for vs, ds in found.items() if ds]
    if len(present) == len(found):
        return Outcome(Tri.TRUE, evidence)
    if not present:
        return Outcome(Tri.FALSE, note=f"no present {' or '.join(params['value_sets'])} diagnosis")
    out = attested_outcome(ctx, params.get("item", short_id(ctx, node)))
    out.evidence = evidence + out.evidence
    return out


def latest_hematocrit(ctx: Context):
    start = add_days(ctx.case.t0, -90)
    values = [h for h in ctx.case.extractor.hematocrits() if start <= h.date <= ctx.case.t0]
    return max(values, key=lambda h: h.instant) if values else None


@predicate("hematocrit_above")
def hematocrit_above(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """INT-18: the latest Hct in [T0 − 90, T0] > 56.0 %; none: UNKNOWN with ERYTHRO, else FALSE."""
    hct = latest_hematocrit(ctx)
    if hct is not None:
        ev = [Evidence(hct.ref, f"{hct.ref} hematocrit {hct.value:g} %, {iso(hct.date)}")]
        return Outcome(Tri.of(hct.value > params.get("above", 56.0)), ev)
    erythro = ctx.case.diagnoses_in("ERYTHRO")
    if erythro:
        return Outcome(Tri.UNKNOWN, [Evidence(erythro[0].ref, f"{erythro[0].ref} {erythro[0].code} (ERYTHRO)")],
                       resolution=f"a hematocrit Observation (LOINC 4544-3) dated {iso(add_days(ctx.case.t0, -90))} to {iso(ctx.case.t0)}")
    return Outcome(Tri.FALSE, note="no hematocrit in the last 90 days and no erythrocytosis diagnosis")


PH_METHOD_CPT = {str(c) for c in list(range(93303, 93309)) + [93451, 93452, 93453, 78472]}


@predicate("pulmonary_hypertension")
def pulmonary_hypertension(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """§5.7: PH/cor pulmonale with a measuring method, or a P wave > 3.0 mm."""
    case = ctx.case
    pwaves = [p for p in case.extractor.p_waves() if p.value > 3.0]
    if pwaves:
        p = pwaves[0]
        return Outcome(Tri.TRUE, [Evidence(p.ref, f"{p.ref} P wave {p.value:g} mm, {iso(p.date)}")])
    dx = case.diagnoses_in("PH") + case.diagnoses_in("COR-PULMONALE")
    if not dx:
        return Outcome(Tri.FALSE, note="no present pulmonary hypertension or cor pulmonale diagnosis")
    ev = [Evidence(dx[0].ref, f"{dx[0].ref} {dx[0].code}")]
    method = _ph_method(ctx)
    if method:
        return Outcome(Tri.TRUE, ev + [method])
    out = attested_outcome(ctx, params.get("item", short_id(ctx, node)),
                           "a completed echocardiogram or catheterization Procedure (CPT 93303–93308, 93451–93453, 78472) or an RVSP Observation")
    out.evidence = ev + out.evidence
    return out


def _ph_method(ctx: Context) -> Evidence | None:
    from ..codes import CPT, codings

    records = ctx.case.records
    for proc in records.of_type("Procedure"):
        if proc.get("status") == "completed" and any(s == CPT and c in PH_METHOD_CPT for s, c in codings(proc.get("code"))):
            return Evidence(f"Procedure/{proc.get('id')}", f"Procedure/{proc.get('id')} {next(c for s, c in codings(proc.get('code')) if c in PH_METHOD_CPT)}")
    for rep in records.of_type("DiagnosticReport"):
        if rep.get("status") == "final" and any(s == CPT and c in PH_METHOD_CPT for s, c in codings(rep.get("code"))):
            return Evidence(f"DiagnosticReport/{rep.get('id')}", f"DiagnosticReport/{rep.get('id')} final")
    rvsp = ctx.case.extractor.rvsp()
    if rvsp:
        return Evidence(rvsp[0].ref, f"{rvsp[0].ref} RVSP {rvsp[0].value:g} mm Hg, {iso(rvsp[0].date)}")
    return None


# -- rules about the qualifying test (I.C, I.D, I.F.2) --------------------------
def block_candidates(ctx: Context, block_id: str, extra_scope: Mapping | None = None) -> tuple[Result, list[Candidate]]:
    result = ctx.evaluate_node(block_id, extra_scope)
    cands = [c for r in result.walk() for c in r.facts if isinstance(c, Candidate)]
    return result, cands


def qualifying_candidates(result: Result) -> list[Candidate]:
    """Valid, qualifying tests along TRUE paths of a block (the tests the block rests on)."""
    if result.value != Tri.TRUE:
        return []
    if not result.children:
        return [c for c in result.facts if isinstance(c, Candidate) and c.qualifies == Tri.TRUE and c.verdict.value == Tri.TRUE]
    return [c for child in result.children for c in qualifying_candidates(child)]


@predicate("test_rule")
def test_rule(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A validity rule reported as its own criterion (I.C, I.D.1, I.D.2).

    Never FALSE: a test the rule invalidates is ignored (§5.5), so the block decides;
    this node says why a qualifying test could not be used.  Omitted when no
    test it governs qualifies.
    """
    rule, block = params["rule"], params["block"]
    result, cands = block_candidates(ctx, block)
    cands = [c for c in cands if c.qualifies != Tri.FALSE]
    if "inpatient" in params:
        cands = [c for c in cands if c.test.inpatient == params["inpatient"]]
    if not cands:
        return Outcome(None)
    governed = {id(c) for c in cands}
    fully = [c for c in qualifying_candidates(result) if id(c) in governed]
    if fully:
        c = fully[0]
        return Outcome(Tri.TRUE, [Evidence(c.test.ref, _rule_text(c, rule))])
    ok = [c for c in cands if c.verdict.rule(rule) == Tri.TRUE]
    if ok:
        return Outcome(Tri.TRUE, [Evidence(c.test.ref, _rule_text(c, rule)) for c in ok[:2]])
    reasons = [c.verdict.rules[rule][1] for c in cands if rule in c.verdict.rules]
    needs = {
        "performer": "a qualifying test performed by a physician, an IDTF or a qualified laboratory (not a DME supplier)",
        "setting": "a qualifying test taken in a chronic stable state, or inpatient within two days before discharge",
    }[rule]
    return Outcome(Tri.UNKNOWN, [Evidence(c.test.ref, c.test.describe()) for c in cands[:3]],
                   resolution="; ".join(dict.fromkeys(reasons + [needs])))


def _rule_text(c: Candidate, rule: str) -> str:
    reason = c.verdict.rules.get(rule, (Tri.TRUE, ""))[1]
    if rule == "performer":
        return f"{c.test.ref} performer class {c.test.performer_class}, {iso(c.test.date)}"
    return reason or c.test.describe()


@predicate("qualifying_context")
def qualifying_context(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """I.F.2: the qualifying study was at rest or during exercise, not only during sleep."""
    result, cands = block_candidates(ctx, params["block"])
    good = qualifying_candidates(result)
    allowed = set(params["contexts"])
    fits = [c for c in good if c.test.context in allowed]
    if fits:
        return Outcome(Tri.TRUE, [Evidence(fits[0].test.ref, fits[0].test.describe())])
    if good:
        return Outcome(Tri.FALSE, [Evidence(c.test.ref, c.test.describe()) for c in good[:2]],
                       note="the only qualifying study was performed during sleep")
    return Outcome(Tri.UNKNOWN, resolution=f"a qualifying test at rest or during exercise ({NEEDED_TEST})")


# -- re-authorization (contract §8) -------------------------------------------
OXYGEN_ROLES_KEY = "oxygen_codes"


def is_reauthorization(ctx: Context) -> tuple[Tri, list[Evidence]]:
    case = ctx.case
    oxygen_codes = {c for codes in ctx.policy.orders.values() for c in codes}
    if case.prior_requests:
        for text, res in case.prior_requests:
            if res is None:
                return Tri.TRUE, [Evidence(text, f"priorRequest {text} (unresolved)")]
            from ..codes import codings
            if res.get("resourceType") == "DeviceRequest" and any(c in oxygen_codes for _, c in codings(res.get("codeCodeableConcept"))):
                return Tri.TRUE, [Evidence(text, f"priorRequest {text} (oxygen)")]
        return Tri.FALSE, []
    ans = answer(ctx, "ROUTE#reauthorization")
    if ans is not None and not ans.stale:
        return Tri.of(bool(ans.value)), [Evidence(ans.source, ans.describe())]
    return Tri.FALSE, []


@predicate("reauthorization")
def reauthorization(ctx: Context, node: Node, params: Mapping) -> Outcome:
    value, ev = is_reauthorization(ctx)
    return Outcome(value, ev)


def initial_group(ctx: Context) -> tuple[int | None, list[Evidence], bool]:
    """ROUTE#initial-group, or derived from the initial qualifying test (contract §8)."""
    ans = answer(ctx, "ROUTE#initial-group")
    if ans is not None and not ans.stale and ans.value in (1, 2):
        return ans.value, [Evidence(ans.source, ans.describe())], False
    from ..dates import parse_date

    dates = [parse_date(res.get("authoredOn")) for _, res in ctx.case.prior_requests if res is not None]
    dates = [d for d in dates if d]
    if not dates:
        return None, [], False
    first = min(dates)
    scope = dict(ctx.policy.settings.get("initial_scope") or {})
    sub = ctx.scoped(scope)
    tests = [t for t in ctx.case.oxygen_tests if t.context != UNKNOWN and t.date <= first and verdict(sub, t).value == Tri.TRUE]
    if not tests:
        return None, [], False
    latest = max(tests, key=lambda t: t.instant)
    g1 = (latest.kind == SAT and latest.value <= 88) or (latest.kind == PAO2 and latest.value <= 55)
    g2 = (latest.kind == SAT and latest.value <= 89) or (latest.kind == PAO2 and 55 < latest.value <= 59)
    ev = [Evidence(latest.ref, latest.describe())]
    if g1:
        return 1, ev, latest.context == SLEEP
    if g2:
        return 2, ev, False
    return None, ev, False


@predicate("reauth_new_test")
def reauth_new_test(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """III.A.3.a/b and the like: for the member's initial group, a new test in its window."""
    group, gev, _ = initial_group(ctx)
    if group is None:
        return Outcome(Tri.UNKNOWN, gev, resolution=resolution_for(ctx, "ROUTE#initial-group"))
    if group != params["group"]:
        return Outcome(None)
    result = ctx.evaluate_node(params["block"], params.get("scope") or {})
    ev = gev + [e for r in result.walk() if r.value == result.value for e in r.evidence][:3]
    return Outcome(result.value, ev, resolution=result.resolution or _first_resolution(result), note=result.note)


def _first_resolution(result: Result) -> str | None:
    for r in result.walk():
        if r.value == Tri.UNKNOWN and r.resolution:
            return r.resolution
    return None


@predicate("subtree")
def subtree(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """Another node of the policy, evaluated under this node's scope (e.g. new tests only)."""
    result = ctx.evaluate_node(params["node"], params.get("scope") or {})
    ev = [e for r in result.walk() if r.value == result.value for e in r.evidence][:3]
    facts = [c for r in result.walk() for c in r.facts]
    return Outcome(result.value, ev, resolution=_first_resolution(result) if result.value == Tri.UNKNOWN else None,
                   note=result.note, facts=facts)


@predicate("nocturnal_group1")
def nocturnal_group1(ctx: Context, node: Node, params: Mapping) -> Outcome:
    item = params.get("item", short_id(ctx, node))
    ans = answer(ctx, item)
    if ans is not None and not ans.stale:
        return Outcome(Tri.of(bool(ans.value)), [Evidence(ans.source, ans.describe())])
    group, ev, nocturnal = initial_group(ctx)
    if group == 1 and nocturnal:
        return Outcome(Tri.TRUE, ev)
    return Outcome(Tri.UNKNOWN, ev, resolution=resolution_for(ctx, item))


@predicate("prior_authorizations")
def prior_authorizations(ctx: Context, node: Node, params: Mapping) -> Outcome:
    item = params.get("item", short_id(ctx, node))
    ans = answer(ctx, item)
    need = params.get("min", 2)
    if ans is not None and not ans.stale:
        return Outcome(Tri.of(ans.value >= need), [Evidence(ans.source, ans.describe())])
    count = len(ctx.case.prior_requests)
    ev = [Evidence(t, f"priorRequest {t}") for t, _ in ctx.case.prior_requests]
    return Outcome(Tri.of(count >= need), ev, note=f"{count} prior request(s) referenced")


@predicate("physician_evaluation")
def physician_evaluation(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """§7.2: a finished AMB/VR/HH Encounter in [R − N, R] with the requester; else the attested date."""
    case = ctx.case
    start, end = add_days(case.r, -int(params["days"])), case.r
    requester = _requester_practitioner(ctx)
    from ..dates import parse_date
    from ..records import reference_str

    for enc in case.records.of_type("Encounter"):
        klass = enc.get("class") if isinstance(enc.get("class"), dict) else {}
        period = enc.get("period") if isinstance(enc.get("period"), dict) else {}
        d = parse_date(period.get("start"))
        if enc.get("status") != "finished" or not isinstance(klass.get("code"), str) or klass.get("code") not in STABLE_CLASSES or not d or not (start <= d <= end):
            continue
        participants = {reference_str(p.get("individual")) for p in _listed(enc.get("participant")) if isinstance(p, dict)}
        if requester and any(p and p.endswith(requester) for p in participants):
            ref = f"Encounter/{enc.get('id')}"
            return Outcome(Tri.TRUE, [Evidence(ref, f"{ref} {klass.get('code')} evaluation by {requester}, {iso(d)}")])
    item = params.get("item", short_id(ctx, node))
    ans = answer(ctx, item)
    if ans is not None and not ans.stale:
        ok = start <= ans.value <= end
        return Outcome(Tri.of(ok), [Evidence(ans.source, ans.describe())],
                       note=None if ok else f"the evaluation is outside {iso(start)} to {iso(end)}")
    return Outcome(Tri.UNKNOWN, resolution=(
        f"a finished ambulatory Encounter with the ordering practitioner dated {iso(start)} to {iso(end)}, "
        f"or {resolution_for(ctx, item)}"))


def _requester_practitioner(ctx: Context) -> str | None:
    from ..records import reference_str

    ref = reference_str(ctx.case.order.get("requester"))
    if not ref:
        return None
    if "PractitionerRole/" in ref:
        role = ctx.case.records.resolve(ref, ctx.case.order)
        prac = reference_str((role or {}).get("practitioner"))
        return prac.split("/")[-2] + "/" + prac.split("/")[-1] if prac and "/" in prac else None
    parts = ref.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


@predicate("reauth_performer")
def reauth_performer(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """IV.B.1.b (A-18): 332BX2000X → UNKNOWN + MD_REVIEW; 332B00000X alone → FALSE."""
    result, cands = block_candidates(ctx, params["block"], params.get("scope") or {})
    good = qualifying_candidates(result) or [c for c in cands if c.qualifies == Tri.TRUE]
    if not good:
        return Outcome(None)
    best = Tri.FALSE
    ev = []
    for c in good:
        t = c.test
        ev.append(Evidence(t.ref, f"{t.ref} performer class {t.performer_class}{' (' + ', '.join(sorted(t.performer_taxonomy)) + ')' if t.performer_taxonomy else ''}"))
        if t.performer_class in ("ACCEPTABLE", "IDTF"):
            return Outcome(Tri.TRUE, ev[-1:])
        if t.performer_class == "UNKNOWN" or "332BX2000X" in t.performer_taxonomy:
            best = Tri.UNKNOWN
    if best == Tri.UNKNOWN:
        if any("332BX2000X" in c.test.performer_taxonomy for c in good):
            ctx.advisories.add("MD_REVIEW")
        return Outcome(Tri.UNKNOWN, ev, resolution="a test obtained by the physician or designee or by an IDTF; a home oxygen provider's test goes to medical-director review")
    return Outcome(Tri.FALSE, ev, note="the test was obtained by a DME company")


@predicate("indication_without_hypoxemia")
def indication_without_hypoxemia(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """CP V / MG II.B.2–4: the condition is the indication and no qualifying hypoxemia (INT-22)."""
    case = ctx.case
    if "age_under" in params:
        older = case.age_at_least(params["age_under"])
        if older is True:
            return Outcome(Tri.FALSE, note=f"member is {params['age_under']} or older")
    found = case.diagnoses_in(params["value_set"], case.indication_diagnoses)
    if not found:
        return Outcome(Tri.FALSE, note=f"{params['value_set']} is not the indication")
    unless = [d for vs in params.get("unless_present", []) for d in case.diagnoses_in(vs)]
    if unless:
        return Outcome(Tri.FALSE, [Evidence(unless[0].ref, f"{unless[0].ref} {unless[0].code}")])
    route = ctx.shared.get("route")
    block = params["hypoxemia"].get(route) if isinstance(params["hypoxemia"], dict) else params["hypoxemia"]
    ev = [Evidence(found[0].ref, f"{found[0].ref} {found[0].code} ({params['value_set']})")]
    if block is None:
        return Outcome(Tri.FALSE, ev)
    hyp = ctx.evaluate_node(block)
    value = ~hyp.value
    if params.get("age_under") and case.age_at_least(params["age_under"]) is None:
        value = all_of([value, Tri.UNKNOWN])
    return Outcome(value, ev, resolution=_first_resolution(hyp) if value == Tri.UNKNOWN else None,
                   note=f"qualifying hypoxemia ({block}) is {hyp.value.value}")


def _listed(value: object) -> list:
    """A FHIR array element, or nothing when malformed data put something else there."""
    return value if isinstance(value, list) else []
