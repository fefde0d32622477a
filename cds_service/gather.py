"""Gathering the patient's FHIR data for one hook call (contract §4): prefetch first, then queries.

:func:`gather` decides which prefetch keys the evaluation could need (coverage, plus the
data keys of every policy revision that could govern the orders' codes), queries the
``fhirServer`` for those the client did not send (§4.1: key missing or an OperationOutcome),
and reads the references the evaluation follows that nothing given resolves (§4.3:
the order's insurance, priorRequest, reasonReference and requester, Coverage.payor,
Observation.performer / encounter / partOf / derivedFrom, PractitionerRole.organization and
.practitioner, and Encounter.serviceProvider where it classifies a performer, §7.3). A new
predicate that follows another reference needs it added to :func:`wanted_references`.
All of it runs concurrently on :class:`~cds_service.fhir_client.FhirClient`'s
pool under one deadline; a reference is read as soon as the data it comes from arrives,
unless a query still running could return it. What did not arrive in time, or failed, is
reported per key, and :func:`cds_service.sansio.hook.process` makes an order whose policy
needs that key a technical failure (§10.3) naming it.

On order-dispatch and appointment-book the orders themselves come by reference
(``sansio.contexts``): those not in the request are read first (``GET {fhirServer}/{Type}/{id}``),
since what they are decides what else is needed; an episode's partners are looked for among the
patient's open orders (``serviceRequests``, ``deviceRequests``, ``medicationRequests``).  The
encounter hooks read their Encounter and query what the oxygen policies read.  On these four
hooks a ``fhirServer`` off the allowlist is never contacted but does not refuse the request:
what could not be fetched is reported per order (a technical failure), or on the secondary
encounter hooks simply not used.

The result is a :class:`GatheredSource`, a ``DataSource`` for the sans-I/O core.
"""
from __future__ import annotations

import logging
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Iterable, Mapping
from urllib.parse import quote, urlsplit

from .fhir_client import Allowlist, Fetch, FhirClient, normalize_base, under_base
from .sansio.contexts import (
    BY_REFERENCE_HOOKS, ENCOUNTER_HOOKS, Lookup, episode_member_of, hook_orders, references_to_read,
)
from .sansio.hook import HookError, PrefetchSource, dialect_of
from .sansio.orders import DraftOrder
from .sansio.records import PREFETCH_TYPES, KeyState, Records, reference_str
from .services import observation_codes

log = logging.getLogger("cds_service.fhir")

TYPE_KEYS = {t: k for k, t in PREFETCH_TYPES.items()}
# Queried beside the contract's keys: the patient's open ServiceRequests, where the rest of a
# dispatched or booked order's episode may be (discovery declares it for those two hooks).
SERVICE_REQUESTS = "serviceRequests"
SERVICE_REQUESTS_QUERY = "ServiceRequest?patient={pid}&status=draft,active,on-hold"
KEY_TYPES = {**PREFETCH_TYPES, SERVICE_REQUESTS: "ServiceRequest"}
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^(?=.*[A-Za-z0-9])[A-Za-z0-9\-.]{1,64}$")  # a FHIR id, and not "." or ".."
LOOKBACK_DAYS = 365  # contract §4.2: date=ge{T0−365}


# -- what to fetch ---------------------------------------------------------------------------
@dataclass
class Plan:
    patient_id: str
    orders: list[DraftOrder]  # the orders evaluated (order-select: the selected ones)
    needed: list[str]  # keys the evaluation of these orders could read
    to_query: list[str]  # needed keys the client did not send
    since: date  # T0 − 365 of the earliest order
    all_orders: list[DraftOrder] = field(default_factory=list)  # every draft order (Records holds them all)
    episode: list[dict] | None = None  # the draft orders of Records when not those of all_orders


def plan(request: Mapping, library, today: date, prefetch: PrefetchSource, read: Iterable[Mapping] = ()) -> Plan:
    """``read``: resources already read from the server (orders referenced by id, the Encounter)."""
    context = request.get("context") or {}
    hook = request.get("hook")
    patient_id = str(context.get("patientId"))
    needed: list[str] = []

    def need(keys: Iterable[str]) -> None:
        needed.extend(k for k in keys if k in PREFETCH_TYPES and k not in needed)

    if hook in ENCOUNTER_HOOKS:
        # Secondary hooks look at the patient's open orders: what the policies with an inpatient
        # test rule read, the orders themselves and the encounters (the evaluation being warmed).
        need(["coverage", "deviceRequests", "encounters"])
        for policy in library.policies:
            if any((n.params or {}).get("rule") == "setting" for n in policy.all_nodes()):
                need(policy.data_keys)
        to_query = [k for k in needed if prefetch.state(k) == KeyState.MISSING]
        return Plan(patient_id, [], needed, to_query, today - timedelta(days=LOOKBACK_DAYS), [])
    the_orders = hook_orders(request, today, Lookup(request, extra=read), dialect_of(request))
    orders = [o for o in the_orders.orders if not o.unavailable]
    episodes = [p for p in library.policies if hook in BY_REFERENCE_HOOKS and p.episode_members and any(
        (o.code and p.role_of(o.code)) or episode_member_of(p, o, library.valuesets) for o in orders)]
    if episodes:
        # A dispatched or booked order of an episode (contract §3.2): its partners are open orders
        # in the patient's record (sansio.contexts.companions), and a member (J2274, the pump drug)
        # takes the determination of the episode's procedure, evaluated on that policy's data.
        need(["medicationRequests", "deviceRequests"])
        needed.append(SERVICE_REQUESTS)
        for policy in episodes:
            need(policy.data_keys)
    given = Records.build(patient_id, the_orders.episode, _given(prefetch) + list(read), prefetch.urls_by_id)
    if any(not [r for r in o.resource.get("insurance") or [] if given.resolve(r, o.resource)] for o in orders):
        need(["coverage"])  # the order's Coverage is not among the data given
    for order in orders:
        if not order.code:
            continue
        for payer in library.payers.values():
            policy, _ = library.policy_for(payer, order.code, order.t0)
            if policy is not None:
                need(policy.data_keys)
    t0 = min((o.t0 for o in orders), default=today)
    to_query = [k for k in needed if prefetch.state(k) == KeyState.MISSING]
    return Plan(patient_id, orders, needed, to_query, t0 - timedelta(days=LOOKBACK_DAYS), orders,
                episode=the_orders.episode)


def _given(prefetch: PrefetchSource) -> list[dict]:
    out: list[dict] = []
    for key in PREFETCH_TYPES:
        out += prefetch.resources(key) or []
    return out


def key_query(key: str, patient_id: str, since: date, code_base: str) -> tuple[str, object]:
    """A key's query (contract §4.2): ("read", ("Patient", id)) or ("search", "Type?params")."""
    pid = quote(patient_id, safe="")
    if key == SERVICE_REQUESTS:
        return "search", SERVICE_REQUESTS_QUERY.format(pid=pid)
    rtype = PREFETCH_TYPES[key]
    if key == "patient":
        return "read", ("Patient", patient_id)
    if key == "coverage":
        return "search", f"Coverage?patient={pid}&status=active"
    if key == "observations":
        codes = quote(observation_codes(code_base), safe=",:/")
        return "search", f"Observation?patient={pid}&code={codes}&date=ge{since.isoformat()}&_count=200"
    if key == "encounters":
        return "search", f"Encounter?patient={pid}&date=ge{since.isoformat()}"
    if key == "questionnaireResponses":
        return "search", f"QuestionnaireResponse?subject=Patient/{pid}&status=completed,amended"
    return "search", f"{rtype}?patient={pid}"


def reference_target(text: str, base: str | None) -> tuple[str, str] | None:
    """``(Type, id)`` a reference can be read as on ``base``; None for contained, urn or foreign ones."""
    if text.startswith("#") or text.startswith("urn:"):
        return None
    if "://" in text:
        if base is None or not under_base(text, base):
            return None  # another server: never contacted
        parts = urlsplit(text)
        text = (normalize_base(f"{parts.scheme}://{parts.netloc}{parts.path}") or "")[len(base):]
    parts = [p for p in text.split("?", 1)[0].split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not _TYPE.match(parts[-2]) or not _ID.match(parts[-1]):
        return None
    return parts[-2], parts[-1]


@dataclass(frozen=True)
class Wanted:
    target: tuple[str, str]
    origin: str | None  # the key whose data needs it (its failure is that key's failure)


def wanted_references(records: Records, orders: list[DraftOrder], base: str | None,
                      read_done: set[tuple[str, str]] | frozenset = frozenset()) -> list[Wanted]:
    """Unresolved references the evaluation follows, in the order found (contract §4.3).

    ``read_done``: targets already read (found or not). An Encounter's serviceProvider is only
    wanted for an Observation whose performers are all settled and none resolves (the
    performer-class fallback, §7.3).
    """
    out: dict[tuple[tuple[str, str], str | None], Wanted] = {}

    def target_of(ref: object) -> tuple[str, str] | None:
        text = reference_str(ref)
        return reference_target(text, base) if text else None

    def want(ref: object, container: Mapping, origin: str | None, types: set[str] | None) -> dict | None:
        resolved = records.resolve(ref, container)
        if resolved is not None:
            return resolved
        target = target_of(ref)
        if target is not None and (types is None or target[0] in types):
            out.setdefault((target, origin), Wanted(target, origin))
        return None

    coverages = list(records.of_type("Coverage"))
    roles: list[tuple[dict, str | None]] = []
    for order in orders:
        res = order.resource
        for ref in res.get("insurance") or []:
            cov = want(ref, res, "coverage", {"Coverage"})
            if cov is not None:
                coverages.append(cov)
        for ref in res.get("priorRequest") or []:
            target = target_of(ref)
            want(ref, res, TYPE_KEYS.get(target[0]) if target else None, None)
        for ref in res.get("reasonReference") or []:
            want(ref, res, "conditions", {"Condition"})
        requester = want(res.get("requester"), res, None, {"Practitioner", "PractitionerRole"})
        if requester is not None and requester.get("resourceType") == "PractitionerRole":
            roles.append((requester, None))
    for cov in coverages:
        for payor in cov.get("payor") or []:
            if isinstance(payor, Mapping) and not isinstance(payor.get("identifier"), Mapping):
                want(payor, cov, "coverage", {"Organization"})
    fallback: list[dict] = []  # encounters whose serviceProvider classifies an Observation's performer
    for obs in records.of_type("Observation"):
        found, unsettled = False, False
        for ref in obs.get("performer") or []:
            perf = want(ref, obs, "observations", {"Practitioner", "PractitionerRole", "Organization"})
            if perf is not None:
                found = True
                if perf.get("resourceType") == "PractitionerRole":
                    roles.append((perf, "observations"))
            elif (target := target_of(ref)) is not None and target not in read_done and \
                    target[0] in ("Practitioner", "PractitionerRole", "Organization"):
                unsettled = True
        enc = want(obs.get("encounter"), obs, "observations", {"Encounter"})
        if enc is not None and enc.get("resourceType") == "Encounter" and not found and not unsettled:
            fallback.append(enc)
        for ref in list(obs.get("partOf") or []) + list(obs.get("derivedFrom") or []):
            want(ref, obs, "observations", {"Procedure"})
    for enc in fallback:
        want(enc.get("serviceProvider"), enc, "observations", {"Organization"})
    for role, origin in roles:
        want(role.get("organization"), role, origin, {"Organization"})
        want(role.get("practitioner"), role, origin, {"Practitioner"})
    return list(out.values())


# -- the data source -------------------------------------------------------------------------
class GatheredSource:
    """Prefetch plus query and read results, as the core's ``DataSource``."""

    def __init__(self, prefetch: PrefetchSource, fetched: Mapping[str, list[dict]] | None = None,
                 failures: Mapping[str, str] | None = None, referenced: list[tuple[dict, set]] | None = None,
                 can_query: bool = False, unavailable: str | None = None, trace: dict | None = None,
                 order_failures: Mapping[str, str] | None = None):
        self.prefetch = prefetch
        self.fetched = dict(fetched or {})
        self.failures = dict(failures or {})
        self._referenced = list(referenced or [])
        self.can_query = can_query
        self.unavailable = unavailable  # why a missing key cannot be queried (→ 412)
        self.trace = trace
        # Orders referenced by id (order-dispatch, appointment-book) that could not be read, and why.
        self.order_failures = dict(order_failures or {})

    def state(self, key: str) -> str:
        if key in self.failures:
            return KeyState.MISSING
        if key in self.fetched:
            rtype = PREFETCH_TYPES.get(key)
            return KeyState.PRESENT if any(r.get("resourceType") == rtype for r in self.fetched[key]) else KeyState.EMPTY
        return self.prefetch.state(key)

    def resources(self, key: str) -> list[dict] | None:
        if key in self.failures:
            return None
        if key in self.fetched:
            return list(self.fetched[key])
        return self.prefetch.resources(key)

    def failure(self, key: str) -> str | None:
        return self.failures.get(key)

    @property
    def urls_by_id(self) -> dict[int, str]:
        """The prefetch entries' fullUrls (query results carry theirs as ``__fullUrl``)."""
        return self.prefetch.urls_by_id

    def referenced(self) -> list[dict]:
        """Resources read to resolve references (none whose origin failed)."""
        return [r for r, origins in self._referenced if not any(o in self.failures for o in origins)]


# -- running it ------------------------------------------------------------------------------
@dataclass
class GatherConfig:
    allowlist: Allowlist
    deadline: float  # time.monotonic() by which gathering stops
    code_base: str = "http://example.org/fhir/cds-coverage"
    max_reads: int = 100


@dataclass
class _Run:
    client: FhirClient
    base: str
    token: str | None
    deadline: float
    prefetch: PrefetchSource
    plan: Plan
    max_reads: int
    results: dict[str, Fetch] = field(default_factory=dict)
    reads: dict[tuple[str, str], Fetch] = field(default_factory=dict)
    origins: dict[tuple[str, str], set] = field(default_factory=dict)  # read target -> keys needing it
    failures: dict[str, str] = field(default_factory=dict)
    read_cap_hit: bool = False
    deadline_hit: bool = False

    def records(self) -> Records:
        sources = _given(self.prefetch)
        for fetch in self.results.values():
            sources += fetch.resources
        for fetch in self.reads.values():
            sources += fetch.resources
        return Records.build(self.plan.patient_id, _drafts(self.plan), sources, self.prefetch.urls_by_id)

    def execute(self, code_base: str) -> None:
        pending: dict[Future, tuple[str, object]] = {}
        for key in self.plan.to_query:
            kind, what = key_query(key, self.plan.patient_id, self.plan.since, code_base)
            if kind == "read":
                fut = self.client.executor.submit(self.client.read, self.base, *what, self.token, self.deadline)
            else:
                fut = self.client.executor.submit(self.client.search, self.base, what, self.token, self.deadline)
            pending[fut] = ("key", key)
        self._submit_reads(pending)
        while pending:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                break
            done, _ = wait(list(pending), timeout=remaining, return_when=FIRST_COMPLETED)
            if not done:
                break
            for fut in done:
                kind, what = pending.pop(fut)
                try:
                    fetch = fut.result()
                except Exception as exc:  # noqa: BLE001 - a bug in the client must not become a 500
                    log.exception("FHIR request failed unexpectedly: %s", type(exc).__name__)
                    fetch = Fetch(error="the request failed inside the service")
                if kind == "key":
                    self.results[what] = fetch
                    if not fetch.ok:
                        self.failures.setdefault(what, fetch.error)
                else:
                    self.reads[what] = fetch
                    for origin in self.origins.get(what) or ():
                        if not fetch.ok and origin:
                            self.failures.setdefault(origin, f"a referenced {what[0]} could not be read: {fetch.error}")
            self._submit_reads(pending)
        if pending:
            self.deadline_hit = True
            for fut, (kind, what) in pending.items():
                fut.cancel()
                if kind == "key":
                    self.results[what] = Fetch(error="no answer before the deadline")
                    self.failures.setdefault(what, "no answer before the deadline")
                else:
                    self.reads[what] = Fetch(error="no answer before the deadline")
                    for origin in self.origins.get(what) or ():
                        if origin:
                            self.failures.setdefault(origin, f"a referenced {what[0]} did not arrive before the deadline")
        if self.deadline_hit:
            # References that were still to be read when time ran out: their data did not arrive either.
            for w in wanted_references(self.records(), self.plan.orders, self.base, set(self.reads)):
                if w.target not in self.reads and w.origin:
                    self.failures.setdefault(w.origin, f"a referenced {w.target[0]} could not be read before the deadline")

    def _submit_reads(self, pending: dict[Future, tuple[str, object]]) -> None:
        running = {KEY_TYPES[w] for kind, w in pending.values() if kind == "key"}
        for w in wanted_references(self.records(), self.plan.orders, self.base, set(self.reads)):
            if w.target in self.origins:  # already asked: its outcome counts for this origin too
                self.origins[w.target].add(w.origin)
                done = self.reads.get(w.target)
                if done is not None and not done.ok and w.origin:
                    self.failures.setdefault(w.origin, f"a referenced {w.target[0]} could not be read: {done.error}")
                continue
            if w.target[0] in running:
                continue  # a query still running may bring it
            if len(self.origins) >= self.max_reads:
                self.read_cap_hit = True
                return
            self.origins[w.target] = {w.origin}
            fut = self.client.executor.submit(self.client.read, self.base, *w.target, self.token, self.deadline)
            pending[fut] = ("read", w.target)

    def trace(self, started: float) -> dict:
        fetches = list(self.results.values()) + list(self.reads.values())
        return {
            "queried": sorted(self.results),
            "queries": len(self.results),
            "reads": len(self.reads),
            "requests": sum(f.requests for f in fetches),
            "retries": sum(f.retries for f in fetches),
            "pages": {k: f.pages for k, f in sorted(self.results.items())},
            "capHits": sorted(k for k, f in self.results.items() if f.cap_hit),
            "readCapHit": self.read_cap_hit,
            "notFound": sum(1 for f in self.reads.values() if f.not_found),
            "errors": dict(sorted(self.failures.items())),
            "deadlineHit": self.deadline_hit,
            "elapsedMs": round((time.monotonic() - started) * 1000, 1),
        }


def _drafts(the_plan: Plan) -> list[dict]:
    return the_plan.episode if the_plan.episode is not None else [o.resource for o in the_plan.all_orders]


# Hooks whose data gathering never refuses the request for a fhirServer off the allowlist: what
# could not be fetched is reported per order (technical failure, contract §10.3) or, on the
# secondary encounter hooks, simply not used.  order-sign and order-select keep the 400.
OFF_ALLOWLIST = "fhirServer is not a FHIR server this service may contact; nothing was sent"
LENIENT_HOOKS = BY_REFERENCE_HOOKS + ENCOUNTER_HOOKS


def _read_references(client: FhirClient, base: str, token: str | None, deadline: float,
                     targets: list[str]) -> dict[str, Fetch]:
    """Read ``Type/id`` targets concurrently before planning (the orders decide what else is needed)."""
    futures = {}
    for target in targets:
        rtype, rid = target.split("/", 1)
        if not _TYPE.match(rtype) or not _ID.match(rid):
            continue
        futures[client.executor.submit(client.read, base, rtype, rid, token, deadline)] = target
    out: dict[str, Fetch] = {}
    remaining = deadline - time.monotonic()
    done, pending = wait(list(futures), timeout=max(0.0, remaining)) if futures else (set(), set())
    for fut in done:
        try:
            out[futures[fut]] = fut.result()
        except Exception as exc:  # noqa: BLE001 - a bug in the client must not become a 500
            log.exception("FHIR read failed unexpectedly: %s", type(exc).__name__)
            out[futures[fut]] = Fetch(error="the request failed inside the service")
    for fut in pending:
        fut.cancel()
        out[futures[fut]] = Fetch(error="no answer before the deadline")
    return out


def _read_failure(fetch: Fetch) -> str:
    if fetch.not_found:
        return "the FHIR server has no such resource"
    return f"it could not be read from the FHIR server ({fetch.error})"


def access_token(request: Mapping) -> str | None:
    auth = request.get("fhirAuthorization")
    token = auth.get("access_token") if isinstance(auth, Mapping) else None
    return token if isinstance(token, str) and token.strip() else None


def gather(request: Mapping, library, today: date, client_factory, config: GatherConfig) -> GatheredSource:
    """The request's data source: prefetch, and what the service fetched itself within the deadline.

    Raises :class:`HookError` 400 when the data needs a ``fhirServer`` that is not on the allowlist
    (no request is sent; order-sign and order-select — the other hooks get per-order technical
    failures, ``LENIENT_HOOKS``). ``client_factory`` is only called when a request will be sent.
    """
    started = time.monotonic()
    prefetch = PrefetchSource(request.get("prefetch"))
    hook = request.get("hook")
    server_url = request.get("fhirServer")
    token = access_token(request)
    allowed = config.allowlist.lookup(server_url) if server_url else None
    # Orders referenced by id (and the encounter of an encounter hook) not in the request are read
    # first: what they are decides what else the evaluation needs (contract §4.3: then a read).
    try:
        to_read = references_to_read(request, Lookup(request)) if hook in LENIENT_HOOKS else []
    except Exception:  # noqa: BLE001 - malformed contexts are process()'s to report (400), not ours
        to_read = []
    order_failures: dict[str, str] = {}
    pre_reads: dict[str, Fetch] = {}
    client: FhirClient | None = None
    if to_read and server_url:
        if allowed is None:
            order_failures = {t: OFF_ALLOWLIST for t in to_read}
        elif allowed.token_required and token is None:
            pass  # process(): the order is missing and cannot be read → 412
        else:
            client = client_factory()
            pre_reads = _read_references(client, allowed.base, token, config.deadline, to_read)
            for target, fetch in pre_reads.items():
                if not fetch.ok or not fetch.resources:
                    order_failures[target] = _read_failure(fetch)
    read = [r for f in pre_reads.values() if f.ok for r in f.resources]
    try:
        the_plan = plan(request, library, today, prefetch, read)
    except Exception:  # noqa: BLE001 - malformed orders are process()'s to report (400), not ours
        return GatheredSource(prefetch, referenced=[(r, {None}) for r in read], can_query=bool(server_url),
                              order_failures=order_failures)
    if not server_url:
        return GatheredSource(prefetch, can_query=False)
    if the_plan.to_query and allowed is None:
        if hook in LENIENT_HOOKS:
            return GatheredSource(prefetch, failures={k: OFF_ALLOWLIST for k in the_plan.to_query}, can_query=True,
                                  order_failures=order_failures)
        raise HookError(
            400, "forbidden",
            f"fhirServer is not a FHIR server this service may contact, and the prefetch lacks "
            f"{', '.join(the_plan.to_query)}: send the prefetch, or ask the payer to allowlist the server",
            "fhirServer",
        )
    if the_plan.to_query and not _ID.match(the_plan.patient_id):
        raise HookError(400, "invalid", "context.patientId is not a FHIR id the service can query", "context.patientId")
    if allowed is not None and allowed.token_required and token is None:
        return GatheredSource(prefetch, can_query=False, unavailable="fhirServer needs fhirAuthorization.access_token")
    if allowed is None or not the_plan.to_query and not wanted_references(
            Records.build(the_plan.patient_id, _drafts(the_plan), _given(prefetch) + read, prefetch.urls_by_id),
            the_plan.orders, allowed.base):
        # everything needed was sent (or read); nothing more to read
        return GatheredSource(prefetch, referenced=[(r, {None}) for r in read], can_query=True,
                              order_failures=order_failures)
    run = _Run(client or client_factory(), allowed.base, token, config.deadline, prefetch, the_plan, config.max_reads)
    for target, fetch in pre_reads.items():
        rtype, rid = target.split("/", 1)
        run.reads[(rtype, rid)] = fetch
        run.origins[(rtype, rid)] = {None}
    try:
        run.execute(config.code_base)
    except Exception as exc:  # noqa: BLE001 - a bug here must cost the data, not the response (no 500)
        log.exception("FHIR data gathering failed: %s", type(exc).__name__)
        for key in the_plan.to_query:
            if key not in run.results or not run.results[key].ok:
                run.failures.setdefault(key, "the data could not be gathered (internal error)")
    unauthorized = token is None and any(f.status == 401 for f in run.results.values() if not f.ok)
    fetched = {k: f.resources for k, f in run.results.items() if f.ok}
    referenced = [(r, run.origins.get(t) or {None}) for t, f in run.reads.items() if f.ok for r in f.resources]
    trace = run.trace(started)
    log.info(
        "fhir gathering hookInstance=%s queries=%d reads=%d requests=%d retries=%d errors=%s capHits=%s "
        "deadlineHit=%s ms=%.1f",
        request.get("hookInstance"), trace["queries"], trace["reads"], trace["requests"], trace["retries"],
        ",".join(trace["errors"]) or "-", ",".join(trace["capHits"]) or "-", trace["deadlineHit"], trace["elapsedMs"],
    )
    return GatheredSource(
        prefetch, fetched, run.failures, referenced, can_query=not unauthorized,
        unavailable="the FHIR server requires an access token (HTTP 401) and fhirAuthorization gave none"
        if unauthorized else None,
        trace=trace, order_failures=order_failures,
    )


def allowlist_for(cfg: Mapping, client=None) -> Allowlist:
    """The configured allowlist, plus the FHIR servers of the authenticated client, if any."""
    entries = cfg.get("FHIR_ALLOWLIST") or ()
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    valid = []
    for entry in entries:
        url = entry.get("url") if isinstance(entry, Mapping) else entry
        if normalize_base(url) is None:
            log.error("FHIR_ALLOWLIST entry ignored: not an http(s) base URL without user info, query or fragment")
            continue
        valid.append(entry)
    required = bool(cfg.get("FHIR_TOKEN_REQUIRED", False))
    servers = getattr(client, "fhir_servers", None) or ()
    return Allowlist(valid, required).extended((s for s in servers if normalize_base(s)), required)
