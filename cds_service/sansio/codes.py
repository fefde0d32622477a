"""Code systems and value-set matching (contract §3, §6).

Value sets are data (``policies/valuesets``); this module only knows how to
match a coding against their ``include`` rules:

* ICD-10-CM: dots and case ignored; ``*`` means starts-with; ``?`` one character;
  ``LOW–HIGH`` a range compared on the length of each end.
* other systems: exact codes, plus ingredient names matched in text/display
  (RxNorm and allergy codes).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable, Mapping

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NUCC = "http://nucc.org/provider-taxonomy"
V3_ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
HCPCS_SYSTEMS = (
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "https://bluebutton.cms.gov/resources/codesystem/hcpcs",
)
ORDER_SYSTEMS = HCPCS_SYSTEMS + (CPT,)

# Short names usable in value-set files instead of full system URIs.
SYSTEM_ALIASES = {
    "icd-10-cm": ICD10CM,
    "snomed": SNOMED,
    "loinc": LOINC,
    "cpt": CPT,
    "hcpcs": HCPCS_SYSTEMS[0],
    "rxnorm": RXNORM,
    "nucc": NUCC,
    "ucum": UCUM,
}


def normalize(system: str, code: str) -> str:
    code = code.strip()
    if system == ICD10CM:
        return code.replace(".", "").upper()
    if system in HCPCS_SYSTEMS or system == CPT:
        return code.upper()
    return code


def canonical_system(system: str) -> str:
    """HCPCS has two system URIs in use; treat them as one."""
    if system in HCPCS_SYSTEMS:
        return HCPCS_SYSTEMS[0]
    return system


def codings(concept: object) -> list[tuple[str, str]]:
    """(system, code) pairs of a CodeableConcept or Coding, skipping malformed ones.

    Parsed JSON is dicts and lists; plain ``isinstance(x, dict)`` keeps this hot path fast.
    """
    if not isinstance(concept, dict):
        return []
    items = concept.get("coding") if "coding" in concept else [concept]
    out = []
    for c in items if isinstance(items, list) else ():
        if isinstance(c, dict):
            system, code = c.get("system"), c.get("code")
            if isinstance(system, str) and isinstance(code, str):
                out.append((HCPCS_SYSTEMS[0] if system in HCPCS_SYSTEMS else system, code))  # canonical_system
    return out


def concept_texts(concept: object) -> list[str]:
    if not isinstance(concept, dict):
        return []
    texts = [concept.get("text")]
    for c in concept.get("coding") or [] if isinstance(concept.get("coding"), list) else []:
        if isinstance(c, dict):
            texts.append(c.get("display"))
    return [t.lower() for t in texts if isinstance(t, str)]


@dataclass(frozen=True)
class _Pattern:
    glob: str | None = None
    low: str | None = None
    high: str | None = None

    @classmethod
    def parse(cls, system: str, text: str) -> "_Pattern":
        for sep in ("–", "..", " - "):
            if sep in text:
                low, high = (normalize(system, p).rstrip("*") for p in text.split(sep, 1))
                return cls(low=low, high=high)
        return cls(glob=normalize(system, text))

    def matches(self, code: str) -> bool:
        if self.glob is not None:
            return fnmatch.fnmatchcase(code, self.glob)
        return code[: len(self.low)] >= self.low and code[: len(self.high)] <= self.high


@dataclass
class ValueSet:
    id: str
    title: str
    patterns: dict[str, list[_Pattern]] = field(default_factory=dict)
    excludes: dict[str, list[_Pattern]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)

    @classmethod
    def from_data(cls, vs_id: str, data: Mapping) -> "ValueSet":
        vs = cls(id=vs_id, title=data.get("title", vs_id))
        for inc in data.get("include", []):
            if "valueSet" in inc:
                vs.includes.append(inc["valueSet"])
                continue
            system = canonical_system(SYSTEM_ALIASES.get(inc["system"], inc["system"]))
            vs.patterns.setdefault(system, []).extend(_Pattern.parse(system, c) for c in inc.get("codes", []))
            vs.excludes.setdefault(system, []).extend(_Pattern.parse(system, c) for c in inc.get("exclude", []))
        vs.names = [n.lower() for n in data.get("names", [])]
        return vs


class ValueSets:
    """The library of value sets, resolving ``include: valueSet`` composition."""

    def __init__(self, sets: Mapping[str, ValueSet]):
        self._sets = dict(sets)
        self._memo: dict[tuple[str, str, str], bool] = {}  # value sets are immutable once loaded

    def __contains__(self, vs_id: str) -> bool:
        return vs_id in self._sets

    def ids(self) -> list[str]:
        return sorted(self._sets)

    def get(self, vs_id: str) -> ValueSet:
        return self._sets[vs_id]

    def contains(self, vs_id: str, system: str, code: str) -> bool:
        key = (vs_id, system, code)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._contains(vs_id, system, code, frozenset())
        return hit

    def _contains(self, vs_id: str, system: str, code: str, _seen: frozenset) -> bool:
        vs = self._sets[vs_id]
        system = canonical_system(system)
        norm = normalize(system, code)
        if any(p.matches(norm) for p in vs.patterns.get(system, ())) and not any(
            p.matches(norm) for p in vs.excludes.get(system, ())
        ):
            return True
        return any(
            self._contains(inner, system, code, _seen | {vs_id}) for inner in vs.includes if inner not in _seen
        )

    def matches_concept(self, vs_id: str, concept: object) -> bool:
        if any(self.contains(vs_id, s, c) for s, c in codings(concept)):
            return True
        names = self._names(vs_id)
        return bool(names) and any(n in t for t in concept_texts(concept) for n in names)

    def _names(self, vs_id: str, _seen: frozenset = frozenset()) -> list[str]:
        vs = self._sets[vs_id]
        out = list(vs.names)
        for inner in vs.includes:
            if inner not in _seen:
                out += self._names(inner, _seen | {vs_id})
        return out

    def any_code_in(self, vs_id: str, pairs: Iterable[tuple[str, str]]) -> bool:
        return any(self.contains(vs_id, s, c) for s, c in pairs)
