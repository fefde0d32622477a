"""Orders: which resources are orders, their codes and their T0 (contract §1, §3).

On order-sign and order-select the orders are the draft orders; on order-dispatch and
appointment-book they are the orders the context references (``contexts``), and the
result may be reported on another resource (``DraftOrder.target``: the Appointment).
"""
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
    # Where the order sits in the request (error messages); None: context.draftOrders.entry[index].resource
    where: str | None = None
    # The resource that carries the coverage-information and that the card is associated with,
    # when it is not the order itself (appointment-book in CRD 2.0.1 mode: the Appointment).
    target: dict | None = None
    # Why the order itself could not be obtained (a dispatched or booked order referenced by id
    # that is neither in the request nor readable); the resource is then only {resourceType, id}.
    unavailable: str | None = None

    @property
    def ref(self) -> str:
        return ref_of(self.resource)

    @property
    def type(self) -> str:
        return self.resource.get("resourceType", "")

    @property
    def location(self) -> str:
        return self.where or f"context.draftOrders.entry[{self.index}].resource"

    @property
    def reported(self) -> dict:
        """The resource the coverage-information goes on."""
        return self.target if self.target is not None else self.resource

    @property
    def reported_ref(self) -> str:
        return ref_of(self.reported)


def order_concepts(resource: Mapping) -> list:
    rtype = resource.get("resourceType")
    if rtype == "DeviceRequest":
        return [resource.get("codeCodeableConcept")]
    if rtype == "ServiceRequest":
        return [resource.get("code")]
    if rtype == "MedicationRequest":
        return [resource.get("medicationCodeableConcept")]
    if rtype == "Appointment":  # an Appointment without an order: its service type codes (CRD appointment-no-order)
        types = resource.get("serviceType")
        return list(types) if isinstance(types, list) else []
    return [resource.get("code")]


def order_codes(resource: Mapping) -> list[str]:
    """HCPCS and CPT codes of an order, in the order given; modifiers (``-RR``) dropped."""
    out = []
    for concept in order_concepts(resource):
        for system, code in codings(concept):
            if canonical_system(system) in {canonical_system(s) for s in ORDER_SYSTEMS}:
                out.append(code.split("-")[0].split(":")[0].strip().upper())
    return out


def order_t0(resource: Mapping) -> date | None:
    """T0: the order's authoredOn; an Appointment booked without an order has none, its created date stands in."""
    if resource.get("resourceType") == "Appointment":
        return parse_date(resource.get("created"))
    return parse_date(resource.get("authoredOn"))


def make_order(resource: dict, today: date, index: int = 0, where: str | None = None,
               target: dict | None = None, unavailable: str | None = None) -> DraftOrder:
    resource.pop("__fullUrl", None)
    codes = order_codes(resource)
    t0 = order_t0(resource)
    return DraftOrder(resource, codes[0] if codes else None, t0 or today, t0 is None, index, where, target, unavailable)


def draft_orders(bundle: object, today: date) -> list[DraftOrder]:
    return [make_order(res, today, i) for i, res in enumerate(bundle_resources(bundle))]
