"""Which Coverage and payer govern an order (contract §2.2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .records import Records, listed, ref_of


class RoutingError(Exception):
    """No or several Coverages match a registered payer: HTTP 400 (business-rule)."""

    def __init__(self, message: str, expression: str = "Coverage.payor"):
        super().__init__(message)
        self.expression = expression


@dataclass
class Route:
    coverage: dict
    payer_id: str


def _active(cov: Mapping) -> bool:
    return cov.get("resourceType") == "Coverage" and cov.get("status") == "active"


def candidate_coverages(order: Mapping, records: Records) -> list[dict]:
    referenced = [r for r in order.get("insurance") or [] if isinstance(r, dict) or isinstance(r, str)]
    if referenced:
        resolved = [records.resolve(r, order) for r in referenced]
        found = [c for c in resolved if c is not None]
        if found:
            return [c for c in found if _active(c)]
    return [c for c in records.of_type("Coverage") if _active(c)]


def payer_ids(cov: Mapping, records: Records, id_system: str) -> set[str]:
    out = set()
    for payor in listed(cov.get("payor")):
        if not isinstance(payor, dict):
            continue
        identifiers = [payor.get("identifier")] if isinstance(payor.get("identifier"), dict) else []
        if not identifiers:
            org = records.resolve(payor, cov)
            if org is not None:
                identifiers = [i for i in org.get("identifier") or [] if isinstance(i, dict)]
        for ident in identifiers:
            if ident.get("system") == id_system and isinstance(ident.get("value"), str):
                out.add(ident["value"])
    return out


def route_order(order: Mapping, records: Records, registry: Mapping, id_system: str) -> Route:
    """Exactly one active Coverage must name a registered payer."""
    matches = []
    for cov in candidate_coverages(order, records):
        known = payer_ids(cov, records, id_system) & set(registry)
        for payer in sorted(known):
            matches.append(Route(cov, payer))
    order_ref = ref_of(order)
    if not matches:
        raise RoutingError(
            f"{order_ref}: no active Coverage names a payer this service knows "
            f"(Coverage.payor identifier {id_system}|{'/'.join(sorted(registry))})"
        )
    if len(matches) > 1:
        raise RoutingError(f"{order_ref}: {len(matches)} active Coverages match registered payers; exactly one must")
    return matches[0]
