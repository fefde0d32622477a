"""One order under evaluation and the patient facts around it.

A :class:`Case` is built from :class:`~.records.Records` and extracts facts
lazily, once each: most policies read only a few kinds of data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Mapping

from .codes import ICD10CM, ValueSets, codings
from .dates import PartialDate, age_at_least, parse_partial
from .evidence import ConditionFact, Extractor, OxygenTest
from .records import Records, ref_of, reference_str


@dataclass(frozen=True)
class Diagnosis:
    system: str
    code: str
    ref: str  # the Condition, or the order for a reasonCode


@dataclass
class Case:
    order: dict
    code: str
    role: str
    t0: date
    today: date
    records: Records
    valuesets: ValueSets
    base: str
    payer: str
    coverage: dict | None = None
    t0_assumed: bool = False
    settings: dict = field(default_factory=dict)

    @property
    def r(self) -> date:
        """Recertification date R = T0 (INT-01, INT-05)."""
        return self.t0

    @property
    def order_ref(self) -> str:
        return ref_of(self.order)

    @cached_property
    def extractor(self) -> Extractor:
        return Extractor(self.records, self.base, self.t0)

    @cached_property
    def patient(self) -> dict | None:
        return self.records.patient()

    @cached_property
    def birth(self) -> PartialDate | None:
        return parse_partial(self.patient.get("birthDate")) if self.patient else None

    def age_at_least(self, years: int) -> bool | None:
        return age_at_least(self.birth, years, self.t0)

    @cached_property
    def oxygen_tests(self) -> list[OxygenTest]:
        return self.extractor.oxygen_tests()

    @cached_property
    def conditions(self) -> list[dict]:
        return self.records.of_type("Condition")

    @cached_property
    def order_diagnoses(self) -> list[Diagnosis]:
        """Coded in the order's reasonCode, or in a Condition the order references."""
        out = []
        for concept in self.order.get("reasonCode") or []:
            out += [Diagnosis(s, c, self.order_ref) for s, c in codings(concept)]
        for ref in self.order.get("reasonReference") or []:
            cond = self.records.resolve(ref, self.order)
            if cond is not None and cond.get("resourceType") == "Condition":
                out += [Diagnosis(s, c, ref_of(cond)) for s, c in codings(cond.get("code"))]
        return out

    @cached_property
    def present_diagnoses(self) -> list[Diagnosis]:
        out = list(self.order_diagnoses)
        for cond in self.conditions:
            if self.extractor.condition_is_present(cond):
                out += [Diagnosis(s, c, ref_of(cond)) for s, c in codings(cond.get("code"))]
        return out

    @cached_property
    def indication_diagnoses(self) -> list[Diagnosis]:
        """The order's indication: its reason, or if it gives none, the present Conditions."""
        return self.order_diagnoses or self.present_diagnoses

    def diagnoses_in(self, vs_id: str, among: list[Diagnosis] | None = None) -> list[Diagnosis]:
        if among is None:  # the present diagnoses: asked of many criteria, answered once per value set
            memo = self.__dict__.setdefault("_present_in", {})
            if vs_id not in memo:
                memo[vs_id] = [d for d in self.present_diagnoses if self.valuesets.contains(vs_id, d.system, d.code)]
            return list(memo[vs_id])
        return [d for d in among if self.valuesets.contains(vs_id, d.system, d.code)]

    def has_diagnosis(self, vs_id: str) -> bool:
        return bool(self.diagnoses_in(vs_id))

    def condition_facts(self) -> list[ConditionFact]:
        return self.extractor.conditions()

    def icd_codes(self) -> list[Diagnosis]:
        return [d for d in self.present_diagnoses if d.system == ICD10CM]

    def order_parameters(self) -> list[Mapping]:
        return [p for p in self.order.get("parameter") or [] if isinstance(p, dict)]

    @cached_property
    def prior_requests(self) -> list[tuple[str, dict | None]]:
        out = []
        for ref in self.order.get("priorRequest") or []:
            text = reference_str(ref)
            if text:
                out.append((text, self.records.resolve(ref, self.order)))
        return out
