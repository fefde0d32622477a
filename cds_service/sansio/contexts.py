"""Each hook's context → the orders to evaluate, the resource each result goes on, and the episode.

* ``order-sign`` / ``order-select``: the draft orders (order-select: the selected ones); the
  episode is every draft order (contract §1, §3.2).
* ``order-dispatch``: the dispatched orders, referenced by id in three context shapes — hook 1.0
  (``order`` + ``performer`` + optional ``task``), the interim draft of the hook library
  (``dispatched-orders`` / ``fulfillment-tasks``) and hook 1.1 (``dispatchedOrders`` /
  ``fulfillmentTasks``; CRD 2.2's ballot logical model carries ``dispatchedOrders`` as a Bundle,
  accepted too).  Each is resolved from the request (inline, prefetch) or from what the service
  read from the FHIR server; the coverage-information goes on the order itself.
* ``appointment-book``: per Appointment, the order it is ``basedOn`` (a ServiceRequest, or a
  Device/MedicationRequest through the ``alternate-reference`` extension CRD 2.2 uses), else the
  Appointment itself with its service type codes.  CRD 2.0.1's Appointment profile carries the
  coverage-information; CRD 2.2 moves it to the order for an appointment with an order
  (``profile-appointment-with-order`` has no coverage-information slot,
  ``profile-appointment-no-order`` has one), so the result goes on the Appointment in 2.0.1 mode
  and on the order in 2.2 mode.
* ``encounter-start`` / ``encounter-discharge``: no orders in context (secondary hooks).

An order referenced by id that cannot be obtained is kept as a stub ``{resourceType, id}`` with
``unavailable`` set: the caller reports it as a technical failure, never annotates the stub.
"""
from __future__ import annotations

from functools import cached_property

from dataclasses import dataclass, field
from datetime import date
from typing import Iterable, Mapping

from .codes import codings
from .orders import DraftOrder, draft_orders, make_order, order_codes
from .records import bundle_entries, bundle_resources, ref_of, reference_str

ORDER_SIGN, ORDER_SELECT = "order-sign", "order-select"
ORDER_DISPATCH, APPOINTMENT_BOOK = "order-dispatch", "appointment-book"
ENCOUNTER_START, ENCOUNTER_DISCHARGE = "encounter-start", "encounter-discharge"
ENCOUNTER_HOOKS = (ENCOUNTER_START, ENCOUNTER_DISCHARGE)
# Orders referenced by id (resolved from prefetch or read from the FHIR server).
BY_REFERENCE_HOOKS = (ORDER_DISPATCH, APPOINTMENT_BOOK)
# CRD 2.0.1 hooks.html#hook-categories (req. 164) / CRD 2.2 hook-16: a coverage-information
# systemAction for every evaluated order on these; the others are 'secondary' (req. 165, 167).
PRIMARY_HOOKS = (ORDER_SIGN, ORDER_DISPATCH, APPOINTMENT_BOOK)

ALTERNATE_REFERENCE = "http://hl7.org/fhir/StructureDefinition/alternate-reference"
OPEN_STATUSES = ("draft", "active", "on-hold")
REQUEST_TYPES = ("ServiceRequest", "DeviceRequest", "MedicationRequest", "NutritionOrder", "VisionPrescription",
                 "CommunicationRequest")


def _items(value: object) -> list:
    """A FHIR array element as given; [] when absent or not an array (malformed data is not an error here)."""
    return value if isinstance(value, list) else []


def ref_key(ref: object) -> str | None:
    """``Type/id`` of a literal reference (relative, absolute or versioned); None for contained/urn/other."""
    text = reference_str(ref)
    if text is None or text.startswith("#") or text.startswith("urn:"):
        return None
    parts = [p for p in text.split("?", 1)[0].split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not parts[-2][:1].isupper():
        return None
    return f"{parts[-2]}/{parts[-1]}"


class Lookup:
    """Resources the request carries or the service read, by ``Type/id``.

    Sources, first wins: resources inline in the context, every prefetch value (any key, so a
    client may send the dispatched orders under a key of its own), then ``extra`` (reads).
    ``failures`` says why a reference could not be read.
    """

    def __init__(self, request: Mapping, extra: Iterable[Mapping] = (), failures: Mapping[str, str] | None = None):
        self.request = request
        self.extra = extra
        self.failures = dict(failures or {})

    @cached_property
    def by_ref(self) -> dict[str, dict]:
        """Indexed when first asked (order-sign and order-select never ask: their orders are inline)."""
        self._index: dict[str, dict] = {}
        context = self.request.get("context") if isinstance(self.request.get("context"), Mapping) else {}
        for res in _inline_resources(context):
            self._add(res)
        prefetch = self.request.get("prefetch") if isinstance(self.request.get("prefetch"), Mapping) else {}
        for value in prefetch.values():
            for res, _ in bundle_entries(value):
                self._add(res)
        for res in self.extra:
            self._add(res)
        return self._index

    def _add(self, res: Mapping) -> None:
        """Kept as given (callers copy what they change); a read's ``__fullUrl`` note is left out."""
        if isinstance(res, dict) and isinstance(res.get("id"), str) and res.get("resourceType") != "OperationOutcome":
            key = f"{res.get('resourceType')}/{res['id']}"
            if key not in self._index:
                self._index[key] = {k: v for k, v in res.items() if k != "__fullUrl"} if "__fullUrl" in res else res

    def get(self, ref: object, container: Mapping | None = None) -> dict | None:
        text = reference_str(ref)
        if text and text.startswith("#") and container is not None:
            return next((dict(c) for c in _items(container.get("contained"))
                         if isinstance(c, Mapping) and c.get("id") == text[1:]), None)
        key = ref_key(ref)
        return self.by_ref.get(key) if key else None

    def why(self, ref: object) -> str:
        key = ref_key(ref)
        return self.failures.get(key or "", "not in the request's context or prefetch")

    def resources(self) -> list[dict]:
        return list(self.by_ref.values())


def _as_list(value: object) -> list:
    if isinstance(value, Mapping):
        return bundle_resources(value) if value.get("resourceType") == "Bundle" else [value]
    return list(value) if isinstance(value, list) else []


def _inline_resources(context: Mapping) -> list[dict]:
    out: list[dict] = []
    for key in ("dispatchedOrders", "dispatched-orders"):
        out += [r for r in _as_list(context.get(key)) if isinstance(r, Mapping)]
    for task in fulfillment_tasks(context):
        out += [c for c in _items(task.get("contained")) if isinstance(c, Mapping)]
    return out


# -- order-dispatch --------------------------------------------------------------------------------
def dispatch_entries(context: Mapping) -> list[tuple[object, str]]:
    """The dispatched orders as (reference string or inline resource, expression), in the order given."""
    for key in ("dispatchedOrders", "dispatched-orders"):
        value = context.get(key)
        if value is None:
            continue
        if isinstance(value, Mapping):  # a Bundle of the orders (CRD 2.2 ballot logical model)
            return [(res, f"context.{key}.entry[{i}].resource") for i, res in enumerate(bundle_resources(value))]
        return [(item, f"context.{key}[{i}]") for i, item in enumerate(value if isinstance(value, list) else [])]
    order = context.get("order")  # hook 1.0
    return [(order, "context.order")] if isinstance(order, str) else []


def fulfillment_tasks(context: Mapping) -> list[dict]:
    for key in ("fulfillmentTasks", "fulfillment-tasks"):
        if context.get(key) is not None:
            return [t for t in _as_list(context[key]) if isinstance(t, Mapping)]
    task = context.get("task")  # hook 1.0
    return [task] if isinstance(task, Mapping) else []


# -- appointment-book ------------------------------------------------------------------------------
def appointment_entries(context: Mapping) -> list[tuple[dict, str]]:
    return [(res, f"context.appointments.entry[{i}].resource")
            for i, res in enumerate(bundle_resources(context.get("appointments")))
            if res.get("resourceType") == "Appointment"]


def based_on(appointment: Mapping) -> list[tuple[object, str]]:
    """The orders an Appointment is based on: basedOn references, and CRD 2.2's alternate-reference
    extension on basedOn for Device/MedicationRequests (R4 limits basedOn to ServiceRequest)."""
    out = []
    for i, ref in enumerate(_items(appointment.get("basedOn"))):
        if not isinstance(ref, Mapping):
            continue
        if reference_str(ref):
            out.append((ref, f"basedOn[{i}]"))
        for ext in _items(ref.get("extension")):
            if isinstance(ext, Mapping) and ext.get("url") == ALTERNATE_REFERENCE and reference_str(ext.get("valueReference")):
                out.append((ext["valueReference"], f"basedOn[{i}].extension"))
    return out


# -- all hooks -------------------------------------------------------------------------------------
@dataclass
class HookOrders:
    orders: list[DraftOrder]  # evaluated and reported, in context order
    episode: list[dict] = field(default_factory=list)  # the draft orders of Records (the episode, contract §3.2)


def _for_patient(resource: Mapping, patient_id: str) -> bool:
    for f in ("subject", "patient"):
        ref = reference_str(resource.get(f))
        if ref is not None:
            parts = ref.rstrip("/").split("/")
            return len(parts) >= 2 and parts[-2] == "Patient" and parts[-1] == patient_id
    return True


def _resolve(ref: object, where: str, today: date, lookup: Lookup, patient_id: str, container: Mapping | None = None,
             target: dict | None = None) -> DraftOrder | None:
    if isinstance(ref, Mapping) and "resourceType" in ref and "reference" not in ref:
        return make_order(dict(ref), today, where=where, target=target)  # inline resource
    key = ref_key(ref)
    found = lookup.get(ref, container)
    if found is not None and not _for_patient(found, patient_id):
        return make_order({"resourceType": found["resourceType"], "id": found["id"]}, today, where=where, target=target,
                          unavailable=f"it is not an order for Patient/{patient_id}")
    if found is not None:
        return make_order(dict(found), today, where=where, target=target)
    if key is None:
        return None
    rtype, rid = key.split("/", 1)
    return make_order({"resourceType": rtype, "id": rid}, today, where=where, target=target, unavailable=lookup.why(ref))


def hook_orders(request: Mapping, today: date, lookup: Lookup, dialect: str) -> HookOrders:
    hook = request.get("hook")
    context = request.get("context") if isinstance(request.get("context"), Mapping) else {}
    patient_id = str(context.get("patientId"))
    if hook in (ORDER_SIGN, ORDER_SELECT):
        drafts = draft_orders(context.get("draftOrders"), today)
        orders = drafts
        if hook == ORDER_SELECT:
            wanted = {s for s in _items(context.get("selections")) if isinstance(s, str)}
            orders = [o for o in drafts if o.ref in wanted or o.ref.split("/")[-1] in wanted]
        return HookOrders(orders, [o.resource for o in drafts])
    orders: list[DraftOrder] = []
    episode: dict[str, dict] = {}
    if hook == ORDER_DISPATCH:
        for ref, where in dispatch_entries(context):
            order = _resolve(ref, where, today, lookup, patient_id)
            if order is not None:
                orders.append(order)
    elif hook == APPOINTMENT_BOOK:
        for appt, where in appointment_entries(context):
            resolved = [(o, str(reference_str(ref) or "").startswith("#")) for o, ref in (
                (_resolve(ref, f"{where}.{path}", today, lookup, patient_id, container=appt), ref)
                for ref, path in based_on(appt)) if o is not None]
            usable = [(o, contained) for o, contained in resolved if not o.unavailable]
            if not resolved:  # booked without an order: the Appointment is what is evaluated
                orders.append(make_order(dict(appt), today, where=where))
                continue
            lead, contained = usable[0] if usable else resolved[0]
            for other, _ in usable:
                episode.setdefault(other.ref, other.resource)
            # CRD 2.0.1 profile-appointment carries the coverage-information on the Appointment; so
            # does 2.2 when the order cannot be updated on its own (not obtained, or contained).
            if lead.unavailable or contained or dialect != "2.2":
                lead.target = dict(appt)
            orders.append(lead)
    seen: set[tuple[str, str]] = set()
    unique = []
    for o in orders:  # one result per order and resource reported on
        if (o.ref, o.reported_ref) not in seen:
            seen.add((o.ref, o.reported_ref))
            unique.append(o)
    for o in unique:
        if not o.unavailable:
            episode.setdefault(o.ref, o.resource)
    return HookOrders(unique, list(episode.values()))


def references_to_read(request: Mapping, lookup: Lookup) -> list[str]:
    """``Type/id`` of the context's orders (and, on encounter hooks, the Encounter) not in the request."""
    hook = request.get("hook")
    context = request.get("context") if isinstance(request.get("context"), Mapping) else {}
    refs: list[tuple[object, Mapping | None]] = []
    if hook == ORDER_DISPATCH:
        refs = [(ref, None) for ref, _ in dispatch_entries(context) if not isinstance(ref, Mapping) or "reference" in ref]
    elif hook == APPOINTMENT_BOOK:
        refs = [(ref, appt) for appt, _ in appointment_entries(context) for ref, _ in based_on(appt)]
    elif hook in ENCOUNTER_HOOKS and isinstance(context.get("encounterId"), str):
        refs = [(f"Encounter/{context['encounterId']}", None)]
    out: list[str] = []
    for ref, container in refs:
        key = ref_key(ref)
        if key and lookup.get(ref, container) is None and key not in out:
            out.append(key)
    return out


# -- the rest of an episode ------------------------------------------------------------------------
def open_orders(resources: Iterable[Mapping], patient_id: str) -> list[dict]:
    """The patient's open orders (draft, active, on-hold) among the given resources."""
    return [dict(r) for r in resources
            if r.get("resourceType") in REQUEST_TYPES and r.get("status") in OPEN_STATUSES
            and isinstance(r.get("id"), str) and _for_patient(r, patient_id)]


def episode_member_of(policy, order: DraftOrder, valuesets) -> bool:
    """An order that takes the determination of its episode (contract §3.2: J2274, pump drugs)."""
    members = policy.episode_members
    if not members:
        return False
    if order.code and order.code in members.get("codes", []):
        return True
    if order.type != "MedicationRequest":
        return False
    res = order.resource
    routes = {c for d in _items(res.get("dosageInstruction")) if isinstance(d, dict) for _, c in codings(d.get("route"))}
    if routes & set(members.get("medication_routes", [])):
        return True
    concept = res.get("medicationCodeableConcept")
    return any(valuesets.matches_concept(vs, concept) for vs in members.get("medication_value_sets", []))


def companions(evaluated: list[DraftOrder], candidates: Iterable[Mapping], library) -> list[dict]:
    """Open orders from the patient's record that belong to the episode of a dispatched or booked order.

    On order-sign the episode is the draftOrders (contract §3.2); an order dispatched or booked
    later arrives alone, its episode partners already signed.  When the order is governed by, or
    a member of, a policy with an episode (CP.MP.173), the patient's open orders of that policy,
    with an episode-member code (J2274), or MedicationRequests given by an episode route
    (intrathecal, epidural) join its episode.  Drugs by other routes stay medication history, as
    they are on order-sign.
    """
    usable = [o for o in evaluated if not o.unavailable]
    episode_policies = [p for p in library.policies if p.episode_members and any(
        (o.code and p.role_of(o.code)) or episode_member_of(p, o, library.valuesets) for o in usable)]
    if not episode_policies:
        return []
    own = {o.ref for o in evaluated}
    out = []
    for res in candidates:
        if ref_of(res) in own:
            continue
        codes = set(order_codes(res))
        routes = {c for d in _items(res.get("dosageInstruction")) if isinstance(d, Mapping) for _, c in codings(d.get("route"))}
        for p in episode_policies:
            members = p.episode_members
            if any(p.role_of(c) for c in codes) or codes & set(members.get("codes", [])) or (
                    res.get("resourceType") == "MedicationRequest" and routes & set(members.get("medication_routes", []))):
                out.append(dict(res))
                break
    return out
