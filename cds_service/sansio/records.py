"""The patient's FHIR data as given: prefetch Bundles, draft orders, contained resources.

:class:`Records` indexes resources by ``Type/id`` and by type, resolves references in
the contract's order (§4.3: contained, draftOrders, prefetch or query results), and
filters out ``entered-in-error`` resources and those of other patients.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

# Prefetch keys of contract §4.1 and the resource type each holds.
PREFETCH_TYPES: dict[str, str] = {
    "patient": "Patient",
    "coverage": "Coverage",
    "observations": "Observation",
    "questionnaireResponses": "QuestionnaireResponse",
    "conditions": "Condition",
    "encounters": "Encounter",
    "procedures": "Procedure",
    "medicationRequests": "MedicationRequest",
    "allergies": "AllergyIntolerance",
    "devices": "Device",
    "deviceRequests": "DeviceRequest",
    "diagnosticReports": "DiagnosticReport",
}

# Where a resource names its patient.
_SUBJECT_FIELDS = ("subject", "patient", "beneficiary")


class KeyState:
    """How a prefetch key arrived (contract §4.1)."""

    MISSING = "missing"  # absent or an OperationOutcome: the service must query
    EMPTY = "empty"  # null or no entries of the key's type: no data, no query
    PRESENT = "present"


def listed(value: object) -> list:
    """A FHIR array element as given, or [] when it is absent or not an array (malformed data)."""
    return value if isinstance(value, list) else []


def key_state(value: object, expected_type: str) -> str:
    if value is None:
        return KeyState.EMPTY
    if not isinstance(value, dict):
        return KeyState.MISSING
    rtype = value.get("resourceType")
    if rtype == "OperationOutcome":
        return KeyState.MISSING
    if rtype == "Bundle":
        resources = [e.get("resource") for e in listed(value.get("entry")) if isinstance(e, dict)]
        if any(isinstance(r, dict) and r.get("resourceType") == "OperationOutcome" for r in resources):
            return KeyState.MISSING
        if not any(isinstance(r, dict) and r.get("resourceType") == expected_type for r in resources):
            return KeyState.EMPTY
        return KeyState.PRESENT
    if rtype == expected_type:
        return KeyState.PRESENT
    return KeyState.MISSING


def bundle_entries(value: object) -> list[tuple[dict, object]]:
    """(resource, fullUrl) of a Bundle's entries (or the resource itself), as given: not copied."""
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") != "Bundle":
        return [(value, None)] if isinstance(value.get("resourceType"), str) else []
    out = []
    for entry in listed(value.get("entry")):
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            res = entry["resource"]
            if isinstance(res.get("resourceType"), str):
                out.append((res, entry.get("fullUrl")))
    return out


def bundle_resources(value: object) -> list[dict]:
    """Resources of a Bundle (or the resource itself), copied, with their fullUrl when given."""
    return [_with_full_url(r, u) for r, u in bundle_entries(value)]


def _with_full_url(resource: Mapping, full_url: object) -> dict:
    res = dict(resource)
    if isinstance(full_url, str):
        res["__fullUrl"] = full_url
    return res


def ref_of(resource: Mapping) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def reference_str(ref: object) -> str | None:
    if isinstance(ref, dict):
        ref = ref.get("reference")
    return ref if isinstance(ref, str) and ref else None


@dataclass
class Records:
    patient_id: str
    by_ref: dict[str, dict] = field(default_factory=dict)
    by_url: dict[str, dict] = field(default_factory=dict)
    # Resources by type, first occurrence of each reference only; filtered by ``_usable`` when a
    # type is first read (``of_type``): most requests read a few types of what they carry.
    typed: dict[str, list[dict]] = field(default_factory=dict)
    draft_orders: list[dict] = field(default_factory=list)

    @classmethod
    def build(cls, patient_id: str, draft_orders: Iterable[Mapping], sources: Iterable[Mapping],
              urls_by_id: Mapping[int, str] | None = None) -> "Records":
        """``urls_by_id``: the fullUrl of a source resource given beside it (``id(resource)``) rather
        than in the resource's ``__fullUrl`` (``PrefetchSource`` does not copy resources to add it)."""
        rec = cls(patient_id=patient_id)
        rec.draft_orders = [dict(o) for o in draft_orders]
        for order in rec.draft_orders:
            rec._add(order, index_type=False)
        by_ref, by_url, typed = rec.by_ref, rec.by_url, rec.typed
        for resource in sources:  # _add, inlined: 10^3+ resources on a large prefetch
            rid = resource.get("id")
            if isinstance(rid, str):
                key = f"{resource.get('resourceType')}/{rid}"
                if key in by_ref:
                    continue  # first source wins; prefetch repeats the draft orders
                by_ref[key] = resource
            url = resource["__fullUrl"] if "__fullUrl" in resource else (urls_by_id.get(id(resource)) if urls_by_id else None)
            if isinstance(url, str):
                by_url.setdefault(url, resource)
            rtype = resource["resourceType"]
            bucket = typed.get(rtype)
            if bucket is None:
                typed[rtype] = [resource]
            else:
                bucket.append(resource)
        return rec

    def _add(self, resource: dict, index_type: bool = True) -> None:
        if not isinstance(resource.get("id"), str):
            key = None
        else:
            key = ref_of(resource)
        if key and key in self.by_ref and index_type:
            return  # first source wins; prefetch repeats the draft orders
        if key:
            self.by_ref.setdefault(key, resource)
        url = resource.get("__fullUrl")
        if isinstance(url, str):
            self.by_url.setdefault(url, resource)
        if index_type:
            self.typed.setdefault(resource["resourceType"], []).append(resource)

    def _usable(self, resource: Mapping) -> bool:
        if resource.get("status") == "entered-in-error":
            return False
        vs = resource.get("verificationStatus")
        if isinstance(vs, dict) and any(c.get("code") == "entered-in-error" for c in listed(vs.get("coding")) if isinstance(c, dict)):
            return False
        if resource.get("resourceType") == "Patient":
            return resource.get("id") == self.patient_id
        for f in _SUBJECT_FIELDS:
            ref = reference_str(resource.get(f))
            if ref is not None:
                parts = ref.rstrip("/").split("/")
                return len(parts) >= 2 and parts[-2] == "Patient" and parts[-1] == self.patient_id
        return True

    def of_type(self, rtype: str) -> list[dict]:
        usable = self.__dict__.setdefault("_usable_by_type", {})
        found = usable.get(rtype)
        if found is None:
            found = usable[rtype] = [r for r in self.typed.get(rtype, ()) if self._usable(r)]
        return found

    def observations_coded(self, codes: frozenset[str] | set[str]) -> list[dict]:
        """Observations with a coding whose code is one of ``codes`` (any system; callers check it),
        in record order. Indexed by code once per request, so each kind of fact scans only its own."""
        index = self.__dict__.get("_obs_by_code")
        if index is None:
            index = {}
            for i, obs in enumerate(self.of_type("Observation")):
                concept = obs.get("code")
                if not isinstance(concept, dict):
                    continue
                items = concept.get("coding") if "coding" in concept else [concept]  # as codes.codings reads it
                for c in items if isinstance(items, list) else ():
                    code = c.get("code") if isinstance(c, dict) else None
                    if isinstance(code, str):
                        hits = index.setdefault(code, [])
                        if not hits or hits[-1] != i:
                            hits.append(i)
            self.__dict__["_obs_by_code"] = index
        positions = [i for code in codes for i in index.get(code, ())]
        if not positions:
            return []
        observations = self.of_type("Observation")
        return [observations[i] for i in sorted(set(positions))]

    def patient(self) -> dict | None:
        p = self.by_ref.get(f"Patient/{self.patient_id}")
        return p if p is not None and self._usable(p) else None

    def resolve(self, ref: object, container: Mapping | None = None) -> dict | None:
        """Resolve a Reference: contained, then indexed resources (Type/id or fullUrl)."""
        text = reference_str(ref)
        if text is None:
            return None
        if text.startswith("#") and container is not None:
            for c in container.get("contained") or []:
                if isinstance(c, dict) and c.get("id") == text[1:]:
                    return dict(c)
            return None
        if text in self.by_url:
            return self.by_url[text]
        parts = text.rstrip("/").split("/")
        if len(parts) >= 2:
            key = f"{parts[-2]}/{parts[-1]}"
            if "_history" in parts and len(parts) >= 4:
                i = parts.index("_history")
                key = f"{parts[i - 2]}/{parts[i - 1]}"
            return self.by_ref.get(key)
        return None
