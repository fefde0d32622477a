"""One CDS Hooks call, end to end, without I/O: request in, response and traces out.

The data the evaluation reads comes through a :class:`DataSource` passed in by the
edge: the prefetch alone (:class:`PrefetchSource`), or the prefetch plus what the
service queried from the EHR's FHIR server itself (``cds_service.gather``).  A source
answers a prefetch key with resources, or ``None`` when the data could not be obtained.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Callable, Mapping, Protocol

from . import cards as cards_mod
from . import stay
from .case import Case
from .coverage_info import (
    DIALECT_2_0_1, DIALECT_2_2, NOT_APPLICABLE_REASON, TECHNICAL, coverage_information, system_action,
)
from .fhir_models import order_problem
from .engine import (
    INSUFFICIENT_DOCUMENTATION, NOT_APPLICABLE, NOT_MEDICALLY_NECESSARY, SUPPORTED, Evaluation, evaluate,
)
from .logic import Tri
from .contexts import (  # noqa: F401 - episode_member_of is re-exported
    BY_REFERENCE_HOOKS, ENCOUNTER_HOOKS, Lookup, companions, episode_member_of, hook_orders, open_orders,
)
from .orders import DraftOrder, make_order
from .records import PREFETCH_TYPES, KeyState, Records, bundle_entries, key_state, ref_of
from .routing import RoutingError, route_order

CONFIGURATION_OPTIONS = [
    {
        "code": "coverage",
        "type": "boolean",
        "name": "Coverage information",
        "description": "Return coverage-information systemActions on the orders (false: cards only).",
        "default": True,
    },
    {
        "code": "advisories",
        "type": "boolean",
        "name": "Advisories",
        "description": "List advisory codes (lesser-cost item, provisional discharge, ...) on cards.",
        "default": True,
    },
]


class HookError(Exception):
    """A request the service must refuse: HTTP status and OperationOutcome issue."""

    def __init__(self, status: int, code: str, diagnostics: str, expression: str | None = None):
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics, self.expression = status, code, diagnostics, expression


class DataSource(Protocol):
    """Prefetch-key data for the evaluation.

    A source may also have (the edge's :class:`~cds_service.gather.GatheredSource` does):
    ``can_query`` (False: a missing key could not be queried → 412), ``unavailable`` (why not),
    ``failure(key)`` (why a key's data could not be retrieved), ``referenced()`` (resources read
    to resolve references) and ``trace`` (query counts, errors and cap hits for the decision trace).
    """

    def resources(self, key: str) -> list[dict] | None: ...

    def state(self, key: str) -> str: ...


class PrefetchSource:
    """The request's prefetch as a data source (contract §4.1 key semantics)."""

    def __init__(self, prefetch: Mapping | None):
        self.prefetch = prefetch if isinstance(prefetch, dict) else {}
        # Read once per key: planning, gathering and evaluation all ask (a key's Bundle may hold 10^3+ entries).
        # The resources are the request's own (not copied: nothing downstream changes them), and the
        # entries' fullUrls are kept beside them (``urls_by_id``, for ``Records.build``).
        self._states: dict[str, str] = {}
        self._resources: dict[str, list[dict] | None] = {}
        self.urls_by_id: dict[int, str] = {}

    def state(self, key: str) -> str:
        state = self._states.get(key)
        if state is None:
            if key not in self.prefetch:
                state = KeyState.MISSING
            else:
                state = key_state(self.prefetch[key], PREFETCH_TYPES.get(key, ""))
            self._states[key] = state
        return state

    def resources(self, key: str) -> list[dict] | None:
        if key not in self._resources:
            state = self.state(key)
            if state == KeyState.MISSING:
                self._resources[key] = None
            elif state == KeyState.EMPTY:
                self._resources[key] = []
            else:
                entries = bundle_entries(self.prefetch[key])
                self._resources[key] = [res for res, _ in entries]
                self.urls_by_id.update((id(res), url) for res, url in entries if isinstance(url, str))
        found = self._resources[key]
        return None if found is None else list(found)


@dataclass
class Settings:
    base: str = "http://example.org/fhir/cds-coverage"
    payer_id_system: str = "http://example.org/payer-id"
    # Where this service serves Questionnaires (…/fhir/Questionnaire); None: no card link.
    questionnaire_endpoint: str | None = None
    # Codes governed by a procedure-specific policy instead (contract §3.3, A-65); empty by default.
    procedure_specific_codes: tuple = ()


@dataclass
class OrderOutcome:
    order: DraftOrder
    determination: str
    payer_id: str | None = None
    payer_name: str = "Coverage Requirements Discovery"
    pa_needed: str = "conditional"
    coverage_ref: str | None = None
    policy: object | None = None
    evaluation: Evaluation | None = None
    reason: str | None = None
    r: date | None = None
    episode_of: str | None = None  # the order whose episode determination this one takes


@dataclass
class HookResult:
    body: dict
    traces: list[dict] = field(default_factory=list)


def dialect_of(request: Mapping) -> str:
    ext = request.get("extension") if isinstance(request.get("extension"), dict) else {}
    requested = str(ext.get("davinci-crd.requestedVersion", "")).strip()
    return DIALECT_2_2 if requested == "2.2" or requested.startswith("2.2.") else DIALECT_2_0_1


def configuration_of(request: Mapping) -> dict:
    """Options the client sent in ``davinci-crd.configuration``, over our defaults."""
    ext = request.get("extension") if isinstance(request.get("extension"), dict) else {}
    sent = ext.get("davinci-crd.configuration")
    config = {o["code"]: o["default"] for o in CONFIGURATION_OPTIONS}
    if sent is None:
        return config
    if not isinstance(sent, dict):
        raise HookError(400, "invalid", "extension.davinci-crd.configuration must be an object",
                        "extension.davinci-crd.configuration")
    for opt in CONFIGURATION_OPTIONS:
        if opt["code"] in sent:
            value = sent[opt["code"]]
            if opt["type"] == "boolean" and not isinstance(value, bool):
                raise HookError(400, "invalid", f"configuration option {opt['code']} must be a boolean",
                                f"extension.davinci-crd.configuration.{opt['code']}")
            config[opt["code"]] = value
    return config  # unknown options are ignored, as CRD asks


def process(
    request: Mapping,
    library,
    source: DataSource,
    today: date,
    settings: Settings,
    uuid_factory: Callable[[], uuid.UUID] = uuid.uuid4,
) -> HookResult:
    """Evaluate the hook's orders (``contexts``): every draft (order-sign), the selected ones
    (order-select), the dispatched orders (order-dispatch), the orders behind the booked
    appointments (appointment-book); advise on the patient's open orders (encounter hooks)."""
    hook = request["hook"]
    context = request["context"]
    dialect = dialect_of(request)
    config = configuration_of(request)
    has_server = bool(request.get("fhirServer"))
    can_query = getattr(source, "can_query", has_server)

    sources: list[dict] = []
    for key in PREFETCH_TYPES:
        sources += source.resources(key) or []
    sources += list(getattr(source, "referenced", lambda: [])())
    # The patient's open ServiceRequests the service queried itself (gather: an episode's partners).
    queried = (source.resources("serviceRequests") or []) if hook in BY_REFERENCE_HOOKS else []
    lookup = Lookup(request, extra=sources + queried, failures=getattr(source, "order_failures", None))
    if hook in ENCOUNTER_HOOKS:
        return _encounter_advice(request, library, source, sources, lookup, today, settings, dialect, uuid_factory)

    the_orders = hook_orders(request, today, lookup, dialect)
    orders, episode = the_orders.orders, list(the_orders.episode)
    if hook in BY_REFERENCE_HOOKS:
        for order in orders:
            if order.unavailable and not can_query and lookup.get(order.ref) is None and order.ref not in lookup.failures:
                why = "no fhirServer to read it" if not has_server else (
                    f"fhirServer cannot be queried ({getattr(source, 'unavailable', None) or 'queries unavailable'})")
                raise HookError(412, "not-found", f"{order.location}: {order.ref} is not in the context or the "
                                f"prefetch and {why}", order.location)
        # The rest of a dispatched or booked order's episode is in the patient's record (contract §3.2).
        episode += companions(orders, open_orders(lookup.resources(), context["patientId"]), library)
    urls = getattr(source, "urls_by_id", None)
    records = Records.build(context["patientId"], episode, sources, urls)

    def require(keys: list[str]) -> list[str]:
        missing = [k for k in keys if source.state(k) == KeyState.MISSING and source.resources(k) is None]
        if missing and not can_query:
            why = "no fhirServer to query" if not has_server else (
                f"fhirServer cannot be queried ({getattr(source, 'unavailable', None) or 'queries unavailable'})")
            raise HookError(
                412, "not-found",
                f"prefetch {', '.join(missing)} missing and {why}: send the prefetch keys "
                f"the service declares, or fhirServer with fhirAuthorization",
                f"prefetch.{missing[0]}",
            )
        return missing

    outcomes = []
    for order in orders:
        if order.unavailable:
            outcomes.append(_unavailable_outcome(order, records, library, settings))
        else:
            outcomes.append(_evaluate_order(order, request, library, records, source, require, today, settings, hook))
    leads = _episode_leads(outcomes, episode, orders, request, library, records, source, require, today, settings, hook)
    _join_episodes(outcomes + leads, library)

    cards, actions, traces = [], [], []
    for oc in outcomes:
        advisories = list(oc.evaluation.advisories) if oc.evaluation and config["advisories"] else []
        policy = oc.policy
        attest = oc.determination == INSUFFICIENT_DOCUMENTATION and policy is not None and _attestable(oc.evaluation)
        ci = cards_mod.CardInput(
            determination=oc.determination, order_ref=oc.order.ref, code=oc.order.code,
            label=_label(oc),
            payer_name=oc.payer_name,
            policy_display=policy.display if policy else None,
            policy_url=policy.url if policy else None,
            prefix=policy.prefix if policy else None,
            t0=oc.order.t0, t0_assumed=oc.order.t0_assumed, r=oc.r, evaluation=oc.evaluation,
            reason=oc.reason, advisories=advisories,
            advisory_texts={a["code"]: a["text"] for a in (policy.advisories if policy else [])},
            code_base=settings.base,
            questionnaire_link=f"{settings.questionnaire_endpoint}/{policy.prefix}"
            if attest and settings.questionnaire_endpoint and hook != "order-select" else None,
        )
        trace = _trace(request, oc)
        if getattr(source, "trace", None):
            trace["fhir"] = dict(source.trace)  # queries, reads, errors and page-cap hits (no URLs, no data)
        if not (hook == "order-select" and oc.determination == NOT_APPLICABLE):
            card = cards_mod.card(ci, dialect, oc.payer_id, uuid_factory)
            if oc.order.reported_ref != oc.order.ref:
                _report_on(card, oc.order)
            cards.append(card)
            trace["cardUuid"] = cards[-1]["uuid"]
        if oc.coverage_ref and config["coverage"]:
            questionnaire = None
            if attest:
                questionnaire = f"{settings.base}/Questionnaire/{policy.prefix}"
            ext = coverage_information(
                determination=oc.determination, coverage_ref=oc.coverage_ref, order_ref=oc.order.reported_ref,
                revision=policy.prefix if policy else "-", today=today, dialect=dialect,
                pa_needed=oc.pa_needed, reason=oc.reason, questionnaire=questionnaire, hook=hook,
            )
            actions.append(system_action(oc.order.reported, ext, _action_description(oc)))
            trace["coverageAssertionId"] = ext["extension"][-1]["valueString"]
        traces.append(trace)
    body: dict = {"cards": cards}
    if actions:
        body["systemActions"] = actions
    return HookResult(body, traces)


def _report_on(card: dict, order: DraftOrder) -> None:
    """The card goes with the resource that carries the coverage-information (the Appointment in CRD
    2.0.1 mode) and says in words which order was evaluated (CRD deviations: linking cards to requests)."""
    card["extension"]["davinci-crd.associated-resource"] = [{"reference": order.reported_ref}]
    card["detail"] += f"\n\nFor {order.reported_ref}, booked for {order.ref}."


def _unavailable_outcome(order: DraftOrder, records, library, settings) -> "OrderOutcome":
    """A referenced order that could not be obtained: no evaluation (contract §10.3).  The
    coverage-information goes only on a resource we hold (the Appointment), never on the stub."""
    oc = OrderOutcome(order, TECHNICAL, reason=f"{order.ref} could not be obtained: {order.unavailable}")
    if order.target is None:
        return oc
    try:
        route = route_order(order.target, records, library.payers, settings.payer_id_system)
    except RoutingError:
        return oc
    payer = library.payers[route.payer_id]
    oc.payer_id, oc.payer_name, oc.pa_needed, oc.coverage_ref = payer.id, payer.name, payer.pa_needed, ref_of(route.coverage)
    return oc


def _episode_leads(outcomes, episode, orders, request, library, records, source, require, today, settings, hook):
    """Episode orders that are not reported (a dispatched J2274's pump procedure, still in the record)
    but whose determination episode members take (``_join_episodes``)."""
    if not any(oc.policy is None and oc.determination != TECHNICAL and oc.payer_id for oc in outcomes):
        return []
    own = {o.ref for o in orders}
    leads = []
    for res in episode:
        if ref_of(res) in own:
            continue
        order = make_order(dict(res), today, where="the patient's record")
        if not order.code or not any(p.episode_members and p.role_of(order.code) for p in library.policies):
            continue
        try:
            leads.append(_evaluate_order(order, request, library, records, source, require, today, settings, hook))
        except HookError:
            continue
    return leads


def _encounter_advice(request, library, source, sources, lookup, today, settings, dialect, uuid_factory) -> HookResult:
    """encounter-start / encounter-discharge: secondary hooks (CRD 2.0.1 req. 165, 167).  The
    patient's open orders are evaluated (the data the payer needs is gathered now, while the
    patient is in hospital); what is returned is only the two-day rule for inpatient oxygen tests,
    when the order's route has it.  No determination, no coverage-information, and never a
    statement that documentation is needed; data that cannot be had means no advice, not an error."""
    context = request["context"]
    patient_id = context["patientId"]
    encounter = lookup.get(f"Encounter/{context.get('encounterId')}")
    if encounter is None or not stay.is_inpatient(encounter):
        return HookResult({"cards": []})

    def lenient(keys: list[str]) -> list[str]:
        return [k for k in keys if source.state(k) == KeyState.MISSING and source.resources(k) is None]

    cards = []
    encounter_ref = ref_of(encounter)
    for res in open_orders(sources, patient_id):
        order = make_order(dict(res), today, where="the patient's open orders")
        if not order.code:
            continue
        records = Records.build(patient_id, [order.resource], sources, getattr(source, "urls_by_id", None))
        try:
            oc = _evaluate_order(order, request, library, records, source, lenient, today, settings, request["hook"])
        except HookError:
            continue
        if oc.policy is None or oc.evaluation is None:
            continue
        rules = stay.setting_rules(oc.policy, oc.evaluation.route)
        if not rules:
            continue
        criteria = [r.id for r in rules]
        label = _label(oc)
        if request["hook"] == "encounter-start":
            advice = stay.admission_advice(order.ref, order.code, label, oc.payer_name, oc.policy, criteria, encounter_ref)
        else:
            discharge, planned = stay.discharge_date(encounter, today)
            start, end = stay.window(discharge)
            if stay.stay_tests_in_window(records, settings.base, encounter_ref, start, end):
                continue
            advice = stay.discharge_advice(order.ref, order.code, label, oc.payer_name, oc.policy, criteria,
                                           encounter_ref, start, end, planned)
        cards.append(stay.card(advice, dialect, uuid_factory))
    return HookResult({"cards": cards})


def _join_episodes(outcomes: list[OrderOutcome], library) -> None:
    """Episode members take the determination of the governed order they go with."""
    leads = [oc for oc in outcomes if oc.policy is not None and oc.policy.episode_members and oc.evaluation]
    for oc in outcomes:
        if oc.policy is not None or oc.determination == TECHNICAL or not oc.payer_id:
            continue
        lead = next((lo for lo in leads if lo.payer_id == oc.payer_id
                     and episode_member_of(lo.policy, oc.order, library.valuesets)), None)
        if lead is None:
            continue
        oc.policy, oc.evaluation, oc.determination = lead.policy, lead.evaluation, lead.determination
        oc.r, oc.episode_of = lead.r, lead.order.ref
        oc.reason = lead.reason


def _label(oc: OrderOutcome) -> str:
    policy = oc.policy
    if policy is None:
        return ""
    role = policy.role_of(oc.order.code) if oc.order.code else None
    if role:
        return policy.label_of(role)
    return f"(episode of {oc.episode_of})" if oc.episode_of else ""


def _attestable(ev: Evaluation | None) -> bool:
    return bool(ev) and any(
        r.value == Tri.UNKNOWN and not r.children and r.resolution and "Questionnaire item" in r.resolution
        for r in ev.deciding
    )


def _action_description(oc: OrderOutcome) -> str:
    what = oc.order.ref if oc.order.reported_ref == oc.order.ref else f"{oc.order.reported_ref} ({oc.order.ref})"
    if oc.determination == TECHNICAL:
        return f"Coverage information for {what}: could not be evaluated"
    return f"Coverage information for {what}: {oc.determination}"


def _evaluate_order(order, request, library, records, source, require, today, settings, hook) -> OrderOutcome:
    registry = library.payers
    where = order.location
    if not order.resource.get("id"):
        raise HookError(400, "required", f"{where}: draft order {order.type} has no id", where)
    problem = order_problem(order.resource)
    if problem:
        raise HookError(400, "structure", f"{where}.{problem[0]}: {problem[1]}", f"{where}.{problem[0]}")
    referenced = [records.resolve(r, order.resource) for r in order.resource.get("insurance") or []]
    if not any(referenced):
        missing = require(["coverage"])
        if missing:
            return OrderOutcome(order, TECHNICAL, reason=f"Coverage data could not be retrieved: {_unretrieved(source, missing)}")
    try:
        route = route_order(order.resource, records, registry, settings.payer_id_system)
    except RoutingError as exc:
        raise HookError(400, "business-rule", str(exc), exc.expression) from exc
    payer = registry[route.payer_id]
    oc = OrderOutcome(order, NOT_APPLICABLE, payer.id, payer.name, payer.pa_needed, ref_of(route.coverage))
    if not order.code:
        oc.reason = NOT_APPLICABLE_REASON
        return oc
    policy, why_not = library.policy_for(payer, order.code, order.t0)
    if policy is None:
        oc.reason = NOT_APPLICABLE_REASON
        return oc
    oc.policy = policy
    missing = require(policy.data_keys)
    if missing:
        oc.determination = TECHNICAL
        oc.reason = f"Patient data could not be retrieved: {_unretrieved(source, missing)}"
        return oc
    case = Case(
        order=order.resource, code=order.code, role=policy.role_of(order.code), t0=order.t0, today=today,
        records=records, valuesets=library.valuesets, base=settings.base, payer=payer.id,
        coverage=route.coverage, t0_assumed=order.t0_assumed,
        settings={"procedure_specific_codes": tuple(settings.procedure_specific_codes)},
    )
    evaluation = evaluate(policy, case)
    oc.evaluation = evaluation
    oc.determination = evaluation.determination
    if evaluation.route in ("III", "IV"):
        oc.r = case.r
    oc.reason = _reason(oc)
    if oc.determination == NOT_APPLICABLE:
        oc.reason = NOT_APPLICABLE_REASON if not evaluation.deciding else oc.reason
    return oc


def _unretrieved(source, keys: list[str]) -> str:
    """Each key whose data could not be retrieved, and why (contract §10.3: the card names the data)."""
    failure = getattr(source, "failure", None)
    return "; ".join(f"{k} ({(failure(k) if failure else None) or 'prefetch missing; not queried'})" for k in keys)


def _reason(oc: OrderOutcome) -> str | None:
    ev, policy = oc.evaluation, oc.policy
    if oc.determination == SUPPORTED:
        return None
    leaves = [r for r in ev.deciding if not r.children] or list(ev.deciding)
    ids = ", ".join(r.id for r in leaves)
    if oc.determination == NOT_MEDICALLY_NECESSARY:
        # Under a FALSE root a TRUE deciding node is an exclusion that applies (contract §10.1).
        unmet = [r.id for r in leaves if r.value == Tri.FALSE]
        applies = [r.id for r in leaves if r.value == Tri.TRUE]
        parts = ([f"{', '.join(unmet)} not met"] if unmet else []) + ([f"{', '.join(applies)} applies"] if applies else [])
        return f"Not medically necessary under {policy.display}: {'; '.join(parts)}"
    if oc.determination == INSUFFICIENT_DOCUMENTATION:
        return f"Documentation needed under {policy.display}: {ids}"
    return f"Not governed under {policy.display}: {ids}"


def _trace(request: Mapping, oc: OrderOutcome) -> dict:
    """The decision record (contract §10.4 Trace): IDs, values and references; per node also what the
    card detail shows of it (evidence descriptions: values, units, dates; no names)."""
    ev = oc.evaluation
    return {
        "hookInstance": request.get("hookInstance"),
        "order": oc.order.ref,
        "code": oc.order.code,
        "payer": oc.payer_id,
        "revision": oc.policy.prefix if oc.policy else None,
        "t0": oc.order.t0.isoformat(),
        "r": oc.r.isoformat() if oc.r else None,
        "determination": oc.determination,
        **({"reportedOn": oc.order.reported_ref} if oc.order.reported_ref != oc.order.ref else {}),
        "episodeOf": oc.episode_of,
        "advisories": list(ev.advisories) if ev else [],
        "deciding": [r.id for r in ev.deciding] if ev else [],
        "nodes": [
            {"id": r.id, "value": r.value.value, "evidence": [e.reference for e in r.evidence], **_shown(r)}
            for r in (ev.nodes() if ev else [])
        ],
    }


def _shown(r) -> dict:
    """What the card detail shows for a node (evidence descriptions, resolution, note), for the console's
    decision page. The recorder stores it redacted (``decisions.recorder.criteria``); never names."""
    out: dict = {}
    if r.evidence:
        out["text"] = [e.text for e in r.evidence]
    if r.resolution and r.value == Tri.UNKNOWN:
        out["resolution"] = r.resolution
    if r.note:
        out["note"] = r.note
    return out
