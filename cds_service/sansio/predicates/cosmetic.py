"""MC.CP.MP.31 cosmetic and reconstructive procedure predicates (contract §3.3, §6, §7.1, §9.3, §11).

* ``procedure_specific_registry`` — ``APPL``: a code in the configured procedure-specific
  registry (``PROCEDURE_SPECIFIC_CODES``) is governed by its own policy → FALSE (NOT_APPLICABLE)
  with ``PROC_SPECIFIC_POLICY`` (A-65).
* ``alternative_selected`` (an ``applies`` condition) — only one I.A alternative applies: the
  first rule of the policy's ``settings.alternatives`` that matches the order (§3.3).
* ``diagnosis_letters_or_attestation`` — ``I.A.1#cause``: a present ICD-10-CM code starting with
  one of the given letters (A–Q, S, T; INT-43), else the attestation.
* ``mastectomy_history`` — ``I.A.1#mastectomy`` (INT-44): a completed mastectomy Procedure (any
  date) or a present Z90.1* / Z42.1 diagnosis.
* ``cosmetic_purpose`` — ``II`` (A-64): the attestation; when unanswered, derived from the
  order's reason and the present diagnoses (§9.3).

Each also serves any later revision of the policy that reuses the names.
"""
from __future__ import annotations

from typing import Mapping

from ..codes import CPT, ICD10CM, ValueSet, ValueSets, canonical_system, codings
from ..engine import Context, Evidence, Node, Outcome, predicate
from ..logic import Tri
from ..records import ref_of
from .common import answer, applies_condition, attested_outcome, resolution_for, short_id

PROC_SPECIFIC_POLICY = "PROC_SPECIFIC_POLICY"


# -- applicability (A-65) -------------------------------------------------------------------------
@predicate("procedure_specific_registry")
def procedure_specific_registry(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """FALSE (the policy does not govern the order) when the code has a procedure-specific policy."""
    code = ctx.case.code
    registry = {str(c).strip().upper() for c in ctx.case.settings.get("procedure_specific_codes") or ()}
    ref = ctx.case.order_ref
    if code in registry:
        return Outcome(
            Tri.FALSE, [Evidence(ref, f"{ref} {code}")], advisories={PROC_SPECIFIC_POLICY},
            note=f"{code} is governed by a procedure-specific policy (configured registry), not by this policy",
        )
    return Outcome(Tri.TRUE, [Evidence(ref, f"{ref} {code}: no procedure-specific policy configured for the code")])


# -- the single I.A alternative (§3.3) --------------------------------------------------------------
def selected_alternative(ctx: Context) -> str | None:
    """The outline path of the one I.A alternative that applies to the order (first rule matching)."""
    memo = ctx.shared.setdefault("memo", {})
    key = ("cosmetic:alternative",)
    if key not in memo:
        chosen = None
        for rule in ctx.policy.settings.get("alternatives") or []:
            codes = rule.get("order_codes")
            if codes is not None and ctx.case.code not in [str(c) for c in codes]:
                continue
            vs = rule.get("diagnosis")
            if vs is not None and not ctx.case.has_diagnosis(vs):
                continue
            chosen = rule["node"]
            break
        memo[key] = chosen
    return memo[key]


@applies_condition("alternative_selected")
def _alternative_selected(ctx: Context, value) -> bool:
    return selected_alternative(ctx) == value


# -- I.A.1#cause (INT-43) ----------------------------------------------------------------------------
def _icd_with_letters(ctx: Context, letters: str):
    wanted = {ch.upper() for ch in letters}
    return [d for d in ctx.case.icd_codes() if d.code.strip()[:1].upper() in wanted]


@predicate("diagnosis_letters_or_attestation")
def diagnosis_letters_or_attestation(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """TRUE if a present ICD-10-CM code starts with one of ``letters``; otherwise the attestation."""
    letters = params["letters"]
    found = _icd_with_letters(ctx, letters)
    if found:
        d = found[0]
        return Outcome(Tri.TRUE, [Evidence(x.ref, f"{x.ref} {x.code} (ICD-10-CM)") for x in found[:3]],
                       note=f"{d.code}: illness, trauma or congenital defect")
    why = params.get("why_unknown") or "a present ICD-10-CM diagnosis of illness, trauma or a congenital defect"
    out = attested_outcome(ctx, params.get("item", short_id(ctx, node)), why)
    if out.value == Tri.FALSE:
        out.note = "no such diagnosis is present and the attestation answers false"
    return out


# -- I.A.1#mastectomy (INT-44, §7.1) -------------------------------------------------------------------
def _icd_matcher(patterns: list[str]) -> ValueSets:
    vs = ValueSet.from_data("INT-44", {"include": [{"system": "icd-10-cm", "codes": list(patterns)}]})
    return ValueSets({"INT-44": vs})


@predicate("mastectomy_history")
def mastectomy_history(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """A mastectomy: a completed Procedure with one of ``procedures`` (CPT, any date), or a present
    diagnosis matching ``diagnoses`` (ICD-10-CM patterns). Closed world: none → FALSE."""
    wanted = {str(c) for c in params.get("procedures") or []}
    for proc in ctx.case.records.of_type("Procedure"):
        if proc.get("status") != "completed":
            continue
        for system, code in codings(proc.get("code")):
            if canonical_system(system) == CPT and code.strip() in wanted:
                when = proc.get("performedDateTime") or (proc.get("performedPeriod") or {}).get("start") or "undated"
                ref = ref_of(proc)
                return Outcome(Tri.TRUE, [Evidence(ref, f"{ref} CPT {code} completed, {str(when)[:10]}")])
    matcher = _icd_matcher(params.get("diagnoses") or [])
    found = [d for d in ctx.case.present_diagnoses if d.system == ICD10CM and matcher.contains("INT-44", d.system, d.code)]
    if found:
        return Outcome(Tri.TRUE, [Evidence(d.ref, f"{d.ref} {d.code}") for d in found[:3]])
    return Outcome(Tri.FALSE, note=(
        f"no completed mastectomy Procedure (CPT {', '.join(sorted(wanted))}) and no present "
        f"{' / '.join(params.get('diagnoses') or [])} diagnosis"))


# -- II: solely to improve appearance (A-64, §9.3) ------------------------------------------------
@predicate("cosmetic_purpose")
def cosmetic_purpose(ctx: Context, node: Node, params: Mapping) -> Outcome:
    """TRUE = performed solely to improve appearance (the exclusion applies).

    The attestation decides; when it is unanswered (or stale):
    * TRUE if the order's reason is only ``value_set`` (Z41.1);
    * FALSE if a present ICD-10-CM code starts with one of ``letters`` (disease, injury or congenital),
      or a diagnosis in ``unless`` (BREAST-RECON) is present;
    * otherwise UNKNOWN.
    """
    item = params.get("item", short_id(ctx, node))
    ans = answer(ctx, item)
    if ans is not None and not ans.stale:
        return Outcome(Tri.of(bool(ans.value)), [Evidence(ans.source, ans.describe())])
    stale = [Evidence(ans.source, ans.describe())] if ans is not None else []
    case = ctx.case
    reasons = case.order_diagnoses
    vs_only = params["value_set"]
    if reasons and all(case.valuesets.contains(vs_only, d.system, d.code) for d in reasons):
        return Outcome(Tri.TRUE, stale + [Evidence(d.ref, f"{d.ref} reason {d.code} only") for d in reasons[:1]],
                       note=f"the order's only reason is {vs_only} ({', '.join(sorted({d.code for d in reasons}))})")
    others = _icd_with_letters(ctx, params["letters"])
    others += [d for vs in params.get("unless") or [] for d in case.diagnoses_in(vs) if d not in others]
    if others:
        return Outcome(Tri.FALSE, stale + [Evidence(d.ref, f"{d.ref} {d.code}") for d in others[:3]],
                       note="a disease, injury, congenital or breast-reconstruction diagnosis is present")
    resolution = (f"{resolution_for(ctx, item)}, or the order's reason code (Z41.1 alone when solely for "
                  "appearance; otherwise the disease, injury or congenital condition treated)")
    if ans is not None:
        resolution += "; the answer on file is stale (authored outside T0 − 90 days to today)"
    return Outcome(Tri.UNKNOWN, stale, resolution=resolution)
