"""Draft orders: which resources are orders, their codes and their T0 (contract §1, §3)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Mapping

from .codes import ORDER_SYSTEMS, codings, canonical_system
from .dates import parse_date
from .records import bundle_resources, ref_of

ORDER_TYPES = {
    "DeviceRequest", "ServiceRequest", "MedicationRequest", "NutritionOrder", "VisionPrescription",
    "CommunicationRequest", "Appointment", "Encounter", "Task",
}


@dataclass
class DraftOrder:
    resource: dict
    code: str | None  # first HCPCS/CPT code, modifiers ignored
    t0: date
    t0_assumed: bool
    index: int = 0  # position in draftOrders.entry

    @property
    def ref(self) -> str:
        return ref_of(self.resource)

    @property
    def type(self) -> str:
        return self.resource.get("resourceType", "")


def order_concepts(resource: Mapping) -> list:
    rtype = resource.get("resourceType")
    if rtype == "DeviceRequest":
        return [resource.get("codeCodeableConcept")]
    if rtype == "ServiceRequest":
        return [resource.get("code")]
    if rtype == "MedicationRequest":
        return [resource.get("medicationCodeableConcept")]
    return [resource.get("code")]


def order_codes(resource: Mapping) -> list[str]:
    """HCPCS and CPT codes of an order, in the order given; modifiers (``-RR``) dropped."""
    out = []
    for concept in order_concepts(resource):
        for system, code in codings(concept):
            if canonical_system(system) in {canonical_system(s) for s in ORDER_SYSTEMS}:
                out.append(code.split("-")[0].split(":")[0].strip().upper())
    return out


def draft_orders(bundle: object, today: date) -> list[DraftOrder]:
    out = []
    for i, res in enumerate(bundle_resources(bundle)):
        res.pop("__fullUrl", None)
        codes = order_codes(res)
        t0 = parse_date(res.get("authoredOn"))
        out.append(DraftOrder(res, codes[0] if codes else None, t0 or today, t0 is None, i))
    return out
