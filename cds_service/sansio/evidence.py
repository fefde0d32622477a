"""Clinical facts extracted from FHIR resources, policy-neutral (contract §5–§7).

Extraction decides what a resource *says* (a SpO2 of 88 % at rest on room air,
performed by a DME supplier, in an inpatient stay); whether that qualifies is the
criteria's business (``cds_service.sansio.criteria``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Mapping, NamedTuple

from .codes import CPT, LOINC, NUCC, SNOMED, UCUM, V3_ACTCODE, codings
from .dates import add_days, parse_date, parse_instant
from .records import Records, listed, reference_str, ref_of

VS_EXT = "http://hl7.org/fhir/us/vitals/StructureDefinition/"
EXERCISE_EXT = VS_EXT + "ExerciseAssociationExt"
SLEEP_EXT = VS_EXT + "SleepStatusExt"

SAT_CODES = {"59408-5", "2708-6", "59417-6", "59410-1", "89276-0", "59409-3", "51733-4"}
SAT_SNOMED_NADIR = "252568001"
PAO2_CODES = {"2703-7"}
HCT_CODES = {"4544-3", "20570-8", "31100-1", "32354-3", "71833-8"}
PAIN_CODES = {"72514-3"}
RVSP_CODES = {"82341-9"}
P_WAVE_CODES = {"p-wave-amplitude-ii", "p-wave-amplitude-iii", "p-wave-amplitude-avf"}
OXIMETRY_SUMMARY = "oximetry-summary"
OBSERVATION_STATUSES = {"final", "amended", "corrected"}

REST, EXERCISE, SLEEP, UNKNOWN = "REST", "EXERCISE", "SLEEP", "UNKNOWN"
ROOM_AIR, ON_O2 = "ROOM_AIR", "ON_O2"
SAT, PAO2 = "SAT", "PAO2"

_CONTEXT_BY_CODE = {"59417-6": REST, "89276-0": EXERCISE}
_EXERCISE_EXT_CODES = {"263678003": REST, "307166007": REST, "309604004": EXERCISE, "255214003": "AFTER_EXERCISE"}
_SLEEP_EXT_CODES = {"248218005": REST, "248220008": SLEEP}
_CONTEXT_BY_PROCEDURE = {
    "94760": REST,
    "94618": EXERCISE,
    "94761": EXERCISE,
    **{c: SLEEP for c in ("94762", "95782", "95783", "95800", "95806", "95810", "95811")},
}
INPATIENT_CLASSES = {"IMP", "ACUTE"}
STABLE_CLASSES = {"AMB", "VR", "HH"}
DME_TAXONOMY = {"332B00000X", "332BX2000X"}


class Quantity(NamedTuple):
    value: float
    unit: str


@dataclass
class OxygenTest:
    """One SpO2/SaO2 or PaO2 measurement and everything a policy asks about it."""

    ref: str
    kind: str  # SAT or PAO2
    code: str
    value: float  # % or mm Hg after conversion
    date: date
    instant: tuple
    context: str  # REST / EXERCISE / SLEEP / UNKNOWN
    o2: str  # ROOM_AIR / ON_O2 / UNKNOWN
    performer_class: str  # DME / IDTF / ACCEPTABLE / UNKNOWN
    performer_taxonomy: frozenset = frozenset()
    encounter_ref: str | None = None
    encounter_class: str | None = None
    encounter_end: date | None = None
    session: str | None = None  # Procedure the test is part of
    components: dict = field(default_factory=dict)  # oximetry-summary code -> float
    nadir_only: bool = False

    @property
    def inpatient(self) -> bool:
        return self.encounter_class in INPATIENT_CLASSES

    def same_session(self, other: "OxygenTest") -> bool:
        """Contract §5.3: part of the same Procedure, or the same date."""
        return bool(self.session and self.session == other.session) or self.date == other.date

    def describe(self) -> str:
        unit = "%" if self.kind == SAT else "mm Hg"
        label = "SpO2" if self.kind == SAT else "PaO2"
        ctx = {REST: "at rest", EXERCISE: "during exercise", SLEEP: "during sleep"}.get(self.context, "context unknown")
        o2 = {ROOM_AIR: "room air", ON_O2: "on O2"}.get(self.o2, "O2 status not recorded")
        value = f"{self.value:g}"
        text = f"{self.ref} {label} {value} {unit} {ctx}, {o2}, {self.date.isoformat()}"
        if self.kind == SAT and self.context == SLEEP:
            text = f"{self.ref} {label} nadir {value} {unit} during sleep, {o2}, {self.date.isoformat()}"
        return text


@dataclass
class LabValue:
    ref: str
    value: float
    unit: str
    date: date
    instant: tuple
    session: str | None = None


@dataclass
class ConditionFact:
    ref: str
    codes: list  # (system, code)
    texts: list
    onset: date | None
    abatement: date | None
    clinical_status: str | None
    from_order: bool = False


def _coding_codes(concept: object, system: str | None = None) -> set[str]:
    return {c for s, c in codings(concept) if system is None or s == system}


def _quantity(q: object) -> Quantity | None:
    if not isinstance(q, dict):
        return None
    value = q.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    unit = q.get("code") if isinstance(q.get("code"), str) else q.get("unit")
    if not isinstance(unit, str):
        unit = ""
    return Quantity(float(value), unit.strip())


def observation_date(obs: Mapping) -> tuple[date | None, tuple | None]:
    """effectiveDateTime, else effectivePeriod.start, else issued (contract §5.2)."""
    inst = parse_instant(obs.get("effectiveDateTime"))  # the usual case first, alone
    if inst:
        return inst[0], inst
    for value in (
        (obs.get("effectivePeriod") or {}).get("start") if isinstance(obs.get("effectivePeriod"), dict) else None,
        obs.get("effectiveInstant"),
        obs.get("issued"),
    ):
        inst = parse_instant(value)
        if inst:
            return inst[0], inst
    return None, None


def _usable_observation(obs: Mapping) -> bool:
    status = obs.get("status")
    return isinstance(status, str) and status in OBSERVATION_STATUSES and "dataAbsentReason" not in obs


def _ext_codes(resource: Mapping, url: str) -> set[str]:
    out = set()
    for ext in listed(resource.get("extension")):
        if isinstance(ext, dict) and ext.get("url") == url:
            out |= _coding_codes(ext.get("valueCodeableConcept"))
    return out


def _components(obs: Mapping, summary_system: str | None = None) -> tuple[dict, dict]:
    """One pass over ``component``: (system, code) → the Quantity of the first component so coded
    (what ``_component`` answers), and the ``summary_system`` components' values by code (last wins)."""
    first: dict = {}
    summary: dict = {}
    for comp in listed(obs.get("component")):
        if not isinstance(comp, dict):
            continue
        pairs = codings(comp.get("code"))
        if not pairs:
            continue
        q = _quantity(comp.get("valueQuantity"))
        for pair in pairs:
            if pair not in first:
                first[pair] = q
            if pair[0] == summary_system and q is not None:
                summary[pair[1]] = q.value
    return first, summary


OXYGEN_TEST_CODES = frozenset(SAT_CODES | PAO2_CODES | {SAT_SNOMED_NADIR})


class Extractor:
    """Builds facts from :class:`Records`; ``base`` is the product's code-system base URL."""

    def __init__(self, records: Records, base: str, t0: date, scope_days: int = 365):
        self.records = records
        self.base = base.rstrip("/")
        self.t0 = t0
        self.scope_start = add_days(t0, -scope_days)
        self.notes: list[str] = []

    # -- observations -----------------------------------------------------
    def _observations(self) -> list[dict]:
        return self._cached("observations", lambda: [o for o in self.records.of_type("Observation") if _usable_observation(o)])

    def _observations_coded(self, codes: frozenset[str]) -> list[dict]:
        """Usable Observations carrying one of ``codes`` (any system: the caller checks it), in record order."""
        return [o for o in self.records.observations_coded(codes) if _usable_observation(o)]

    def _in_scope(self, d: date | None) -> bool:
        return d is not None and self.scope_start <= d <= self.t0

    def _procedure_context(self, obs: Mapping) -> tuple[str | None, str | None]:
        if not obs.get("partOf") and not obs.get("derivedFrom"):
            return None, None
        for ref in list(obs.get("partOf") or []) + list(obs.get("derivedFrom") or []):
            text = reference_str(ref)
            if not text or "Procedure/" not in text and not text.startswith("#"):
                continue
            proc = self.records.resolve(ref, obs)
            if proc is None or proc.get("resourceType") != "Procedure":
                continue
            for code in _coding_codes(proc.get("code"), CPT):
                if code in _CONTEXT_BY_PROCEDURE:
                    return _CONTEXT_BY_PROCEDURE[code], ref_of(proc)
            return None, ref_of(proc)
        return None, None

    def _context(self, obs: Mapping, loinc: set[str]) -> tuple[str, str | None]:
        proc_ctx, session = self._procedure_context(obs)
        for code, ctx in _CONTEXT_BY_CODE.items():
            if code in loinc:
                return ctx, session
        if "extension" in obs:
            for code in _ext_codes(obs, EXERCISE_EXT):
                if code in _EXERCISE_EXT_CODES:
                    return _EXERCISE_EXT_CODES[code], session
            for code in _ext_codes(obs, SLEEP_EXT):
                if code in _SLEEP_EXT_CODES:
                    return _SLEEP_EXT_CODES[code], session
        if proc_ctx:
            return proc_ctx, session
        if "59410-1" in loinc:
            return REST, session
        return UNKNOWN, session

    @staticmethod
    def _o2_status(obs: Mapping, loinc: set[str], first: Mapping | None = None) -> str:
        """``first``: (system, code) → the first component so coded (``_components``), when already read."""
        if first is None:
            first = _components(obs)[0]
        flow = first.get((LOINC, "3151-8"))
        fio2 = first.get((LOINC, "3150-0"))
        if (flow and flow.value == 0) or (fio2 and fio2.value <= 21) or "59410-1" in loinc:
            return ROOM_AIR
        if (flow and flow.value > 0) or (fio2 and fio2.value > 21) or "59409-3" in loinc:
            return ON_O2
        return UNKNOWN

    def performer(self, obs: Mapping, encounter: Mapping | None) -> tuple[str, frozenset]:
        """Performer class (contract §7.3) and the NUCC taxonomy codes seen.

        Many tests share a performer: the answer is kept per set of references (not for contained ones)."""
        refs = tuple(reference_str(p) for p in listed(obs.get("performer")))
        provider = reference_str(encounter.get("serviceProvider")) if encounter is not None else None
        key = (refs, provider)
        if any(r and r.startswith("#") for r in refs + (provider,)):
            return self._performer(obs, encounter)
        memo = self.__dict__.setdefault("_performers", {})
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = self._performer(obs, encounter)
        return hit

    def _performer(self, obs: Mapping, encounter: Mapping | None) -> tuple[str, frozenset]:
        candidates = [self.records.resolve(p, obs) for p in listed(obs.get("performer"))]
        candidates = [c for c in candidates if c is not None]
        if not candidates and encounter is not None:
            sp = self.records.resolve(encounter.get("serviceProvider"), encounter)
            candidates = [sp] if sp is not None else []
        if not candidates:
            return UNKNOWN, frozenset()
        taxonomy: set[str] = set()
        idtf = False
        for res in candidates:
            rtype = res.get("resourceType")
            concepts = []
            if rtype == "Organization":
                concepts = list(listed(res.get("type")))
            elif rtype == "PractitionerRole":
                concepts = listed(res.get("specialty")) + listed(res.get("code"))
                org = self.records.resolve(res.get("organization"), res)
                if org is not None:
                    concepts += listed(org.get("type"))
            for concept in concepts:
                taxonomy |= _coding_codes(concept, NUCC) & DME_TAXONOMY
                if "idtf" in _coding_codes(concept, f"{self.base}/CodeSystem/performer-class"):
                    idtf = True
        if taxonomy:
            return "DME", frozenset(taxonomy)
        if idtf:
            return "IDTF", frozenset()
        return "ACCEPTABLE", frozenset()

    def encounter_facts(self, obs: Mapping) -> tuple[dict | None, str | None, date | None]:
        ref = reference_str(obs.get("encounter"))
        if ref is None or ref.startswith("#"):
            return self._encounter_facts(obs)
        memo = self.__dict__.setdefault("_encounters", {})
        hit = memo.get(ref)
        if hit is None:
            hit = memo[ref] = self._encounter_facts(obs)
        return hit

    def _encounter_facts(self, obs: Mapping) -> tuple[dict | None, str | None, date | None]:
        enc = self.records.resolve(obs.get("encounter"), obs)
        if enc is None or enc.get("resourceType") != "Encounter":
            return None, None, None
        klass = enc.get("class")
        code = None
        if isinstance(klass, dict):
            code = klass.get("code") if klass.get("system") in (V3_ACTCODE, None) else None
        end = parse_date((enc.get("period") or {}).get("end")) if isinstance(enc.get("period"), dict) else None
        return enc, code if isinstance(code, str) else None, end

    def oxygen_tests(self) -> list[OxygenTest]:
        tests: list[OxygenTest] = []
        oximetry = f"{self.base}/CodeSystem/{OXIMETRY_SUMMARY}"
        for obs in self._observations_coded(OXYGEN_TEST_CODES):
            pairs = codings(obs.get("code"))
            loinc = {c for s, c in pairs if s == LOINC}
            snomed = {c for s, c in pairs if s == SNOMED}
            if loinc & PAO2_CODES:
                kind, code = PAO2, "2703-7"
            elif loinc & SAT_CODES:
                kind, code = SAT, min(loinc & SAT_CODES)
            elif SAT_SNOMED_NADIR in snomed:
                kind, code = SAT, SAT_SNOMED_NADIR
            else:
                continue
            d, inst = observation_date(obs)
            if not self._in_scope(d):
                continue
            q = _quantity(obs.get("valueQuantity"))
            if q is None:
                continue
            value = self._oxygen_value(kind, q)
            if value is None:
                continue
            if code == SAT_SNOMED_NADIR:
                context, session = SLEEP, self._procedure_context(obs)[1]
            else:
                context, session = self._context(obs, loinc)
            enc, enc_class, enc_end = self.encounter_facts(obs)
            pclass, taxonomy = self.performer(obs, enc)
            first, components = _components(obs, oximetry)
            tests.append(
                OxygenTest(
                    ref=ref_of(obs), kind=kind, code=code, value=value, date=d, instant=inst,
                    context=context, o2=self._o2_status(obs, loinc, first), performer_class=pclass,
                    performer_taxonomy=taxonomy, encounter_ref=ref_of(enc) if enc else None,
                    encounter_class=enc_class, encounter_end=enc_end, session=session,
                    components=components, nadir_only=code == SAT_SNOMED_NADIR,
                )
            )
        # 51733-4 only when no measured SAT shares its instant (INT-24).
        measured = {t.instant for t in tests if t.kind == SAT and t.code != "51733-4"}
        tests = [t for t in tests if not (t.code == "51733-4" and t.instant in measured)]
        # After-exercise (255214003) is EXERCISE only in the same session as a during-exercise value (INT-11);
        # otherwise its context is unknown and the test unused (INT-12).
        during = [t for t in tests if t.context == EXERCISE]
        for t in tests:
            if t.context == "AFTER_EXERCISE":
                t.context = EXERCISE if any(t.same_session(d) for d in during) else UNKNOWN
        return tests

    @staticmethod
    def _oxygen_value(kind: str, q: Quantity) -> float | None:
        if kind == SAT:
            return q.value if q.unit == "%" else None
        if q.unit == "mm[Hg]":
            return q.value
        if q.unit == "kPa":
            return round(q.value * 7.50062, 1)
        return None

    def labs(self, codes: set[str], units: dict[str, float], system: str = LOINC, window_start: date | None = None) -> list[LabValue]:
        """Values of the given codes, converted by a unit→factor table; others ignored."""
        out = []
        for obs in self._observations_coded(frozenset(codes)):
            if not _coding_codes(obs.get("code"), system) & codes:
                continue
            d, inst = observation_date(obs)
            if d is None or d > self.t0 or (window_start and d < window_start):
                continue
            q = _quantity(obs.get("valueQuantity"))
            if q is None or q.unit not in units:
                continue
            session = None
            for ref in obs.get("partOf") or []:
                session = reference_str(ref)
            out.append(LabValue(ref_of(obs), round(q.value * units[q.unit], 4), q.unit, d, inst, session))
        return out

    def hematocrits(self) -> list[LabValue]:
        return self._cached("hct", lambda: self.labs(HCT_CODES, {"%": 1.0, "1": 100.0, "L/L": 100.0}))

    def p_waves(self) -> list[LabValue]:
        return self._cached("pwave", lambda: self.labs(P_WAVE_CODES, {"mm": 1.0},
                                                       system=f"{self.base}/CodeSystem/ecg-measure"))

    def rvsp(self) -> list[LabValue]:
        return self._cached("rvsp", lambda: self.labs(RVSP_CODES, {"mm[Hg]": 1.0}))

    def _cached(self, key: str, compute):
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    # -- conditions -------------------------------------------------------
    def conditions(self) -> list[ConditionFact]:
        out = []
        for cond in self.records.of_type("Condition"):
            out.append(self._condition_fact(cond))
        return out

    @staticmethod
    def _condition_fact(cond: Mapping, from_order: bool = False) -> ConditionFact:
        cs = cond.get("clinicalStatus")
        status_codes = [c for _, c in codings(cs)] if isinstance(cs, dict) else []
        return ConditionFact(
            ref=ref_of(cond),
            codes=codings(cond.get("code")),
            texts=[],
            onset=parse_date(cond.get("onsetDateTime") or _period_start(cond.get("onsetPeriod"))),
            abatement=parse_date(cond.get("abatementDateTime") or _period_start(cond.get("abatementPeriod"))),
            clinical_status=status_codes[0] if status_codes else None,
            from_order=from_order,
        )

    def condition_is_present(self, cond: Mapping) -> bool:
        """Present on T0 (contract §6): active/recurrence/relapse, not refuted, onset not after T0.

        Reads only what decides (the abatement only without a clinical status): asked of every Condition."""
        if "verificationStatus" in cond and {c for _, c in codings(cond["verificationStatus"])} & {"refuted", "entered-in-error"}:
            return False
        onset = parse_date(cond.get("onsetDateTime") or _period_start(cond.get("onsetPeriod")))
        if onset and onset > self.t0:
            return False
        cs = cond.get("clinicalStatus")
        status = next((c for _, c in codings(cs)), None) if isinstance(cs, dict) else None
        if status is None:
            abatement = parse_date(cond.get("abatementDateTime") or _period_start(cond.get("abatementPeriod")))
            return not (abatement and abatement <= self.t0) and not _has_abatement_without_date(cond)
        return status in {"active", "recurrence", "relapse"}


def _has_abatement_without_date(cond: Mapping) -> bool:
    return any(k.startswith("abatement") for k in cond) and not any(
        k in cond for k in ("abatementDateTime", "abatementPeriod")
    )


def _period_start(period: object) -> object:
    return period.get("start") if isinstance(period, dict) else None
