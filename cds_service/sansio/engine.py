"""The policy engine: a criteria tree (data) evaluated over a case (facts).

``evaluate(policy, case)`` is pure: it reads the policy document and the facts
and returns the determination, the deciding criteria and a trace of every
evaluated node.  Leaves name a *predicate* registered in
``cds_service.sansio.predicates``; branches combine children with ALL / ANY /
NONE in Kleene logic (contract §10.1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from .logic import COMBINATORS, Tri

SUPPORTED = "SUPPORTED"
NOT_MEDICALLY_NECESSARY = "NOT_MEDICALLY_NECESSARY"
INSUFFICIENT_DOCUMENTATION = "INSUFFICIENT_DOCUMENTATION"
NOT_APPLICABLE = "NOT_APPLICABLE"

_DETERMINATION = {Tri.TRUE: SUPPORTED, Tri.FALSE: NOT_MEDICALLY_NECESSARY, Tri.UNKNOWN: INSUFFICIENT_DOCUMENTATION}


@dataclass(frozen=True)
class Evidence:
    reference: str  # Type/id of the resource the fact came from
    text: str  # human-readable: value, unit, context, date


@dataclass
class Outcome:
    """What a predicate concludes about one leaf."""

    value: Tri
    evidence: list[Evidence] = field(default_factory=list)
    resolution: str | None = None  # for UNKNOWN: exactly what resolves it
    advisories: set[str] = field(default_factory=set)
    note: str | None = None  # why, when evidence alone does not say
    facts: list = field(default_factory=list)  # structured facts for sibling rules


@dataclass
class Node:
    """A criterion of a policy document (loaded, IDs fully qualified)."""

    id: str
    text: str
    op: str | None = None  # all / any / none for branches
    children: list["Node"] = field(default_factory=list)
    predicate: str | None = None
    params: dict = field(default_factory=dict)
    applies: dict = field(default_factory=dict)
    scope: dict = field(default_factory=dict)
    block: bool = False  # an oxygen-test block: FALSE with no valid test is UNKNOWN (INT-10)


@dataclass
class Result:
    id: str
    value: Tri
    text: str
    op: str | None = None
    evidence: list[Evidence] = field(default_factory=list)
    resolution: str | None = None
    note: str | None = None
    children: list["Result"] = field(default_factory=list)
    facts: list = field(default_factory=list)

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class Evaluation:
    determination: str
    root: Result | None
    deciding: list[Result]
    advisories: list[str]
    route: str | None = None

    def nodes(self) -> list[Result]:
        return list(self.root.walk()) if self.root else []


Predicate = Callable[["Context", Node, dict], Outcome]
PREDICATES: dict[str, Predicate] = {}


def predicate(name: str):
    """Register a leaf predicate under the name policy documents use."""

    def register(fn: Predicate) -> Predicate:
        PREDICATES[name] = fn
        return fn

    return register


class Context:
    """Evaluation state for one order: the case, the policy, scope and memo."""

    def __init__(self, policy, case, scope: Mapping | None = None, shared: dict | None = None):
        self.policy = policy
        self.case = case
        self.scope = dict(scope or {})
        self.shared = shared if shared is not None else {"advisories": set(), "memo": {}}

    @property
    def advisories(self) -> set[str]:
        return self.shared["advisories"]

    @property
    def scope_key(self) -> tuple:
        """A hashable form of the scope, for memo keys (computed once per context)."""
        key = self.__dict__.get("_scope_key")
        if key is None:
            key = self.__dict__["_scope_key"] = tuple(sorted((k, repr(v)) for k, v in self.scope.items()))
        return key

    def scoped(self, extra: Mapping) -> "Context":
        if not extra:
            return self
        return Context(self.policy, self.case, {**self.scope, **extra}, self.shared)

    def qualify(self, short_id: str) -> str:
        return self.policy.qualify(short_id)

    def evaluate_node(self, node_id: str, extra_scope: Mapping | None = None) -> Result:
        """Evaluate another node of the policy (memoized per scope)."""
        node = self.policy.node(node_id)
        ctx = self.scoped(_inherited_scope(self.policy, node) | dict(extra_scope or {}))
        key = (node.id, ctx.scope_key)
        memo = self.shared["memo"]
        if key not in memo:
            memo[key] = evaluate_tree(ctx, node)
        return memo[key]


def _inherited_scope(policy, node: Node) -> dict:
    scope: dict = {}
    for ancestor in policy.ancestors(node.id):
        scope.update(ancestor.scope)
    return scope


def applies(ctx: Context, node: Node) -> bool:
    from .predicates import condition_applies  # late: predicates import engine

    return all(condition_applies(ctx, key, value) for key, value in node.applies.items())


def evaluate_tree(ctx: Context, node: Node) -> Result | None:
    """Evaluate a node and its subtree; None when the node does not apply."""
    if node.applies and not applies(ctx, node):
        return None
    ctx = ctx.scoped(node.scope)
    if node.predicate:
        fn = PREDICATES[node.predicate]
        out = fn(ctx, node, node.params)
        if out.value is None:  # the predicate found the criterion does not apply
            return None
        ctx.advisories.update(out.advisories)
        return Result(node.id, out.value, node.text, None, out.evidence, out.resolution, out.note, facts=out.facts)
    children = [r for r in (evaluate_tree(ctx, c) for c in node.children) if r is not None]
    if not children:
        return None
    value = COMBINATORS[node.op](c.value for c in children)
    result = Result(node.id, value, node.text, node.op, children=children)
    if node.block and value == Tri.FALSE:
        from .predicates import no_valid_test_outcome

        out = no_valid_test_outcome(ctx, node)
        if out is not None:
            result.value, result.resolution, result.note = out.value, out.resolution, out.note
    return result


def deciding(root: Result) -> list[Result]:
    """Nodes whose value equals the root's along a deciding path (contract §10.1)."""
    out: list[Result] = []

    def visit(node: Result, want: Tri) -> None:
        for child in node.children:
            if node.op == "none":
                # Under a FALSE NONE, the TRUE members (exclusions that apply) decide;
                # under TRUE, members are not listed; UNKNOWN members decide an UNKNOWN.
                if want == Tri.FALSE and child.value == Tri.TRUE:
                    out.append(child)
                    visit(child, Tri.TRUE)
                elif want == Tri.UNKNOWN and child.value == Tri.UNKNOWN:
                    out.append(child)
                    visit(child, Tri.UNKNOWN)
            elif child.value == want:
                out.append(child)
                visit(child, want)

    visit(root, root.value)
    return out


def determination_of(value: Tri) -> str:
    return _DETERMINATION[value]


def _route(ctx: Context) -> tuple[str | None, list[str], Result]:
    """Pick the section (contract §3.1 /ROUTE): first rule whose conditions all hold."""
    policy = ctx.policy
    route_id = f"{policy.prefix}/ROUTE"
    evidence: list[Evidence] = []
    for rule in policy.route:
        values = []
        for cond in rule.when:
            out = PREDICATES[cond["predicate"]](ctx, Node(route_id, "route"), dict(cond.get("params") or {}))
            evidence += out.evidence
            values.append(out)
            if out.value == Tri.FALSE:
                break
            if out.value == Tri.UNKNOWN:
                return None, [], Result(route_id, Tri.UNKNOWN, "Route to the applicable section",
                                        evidence=evidence, resolution=out.resolution)
        if all(o.value == Tri.TRUE for o in values):
            unique = list({e.reference: e for e in evidence}.values())
            return rule.to, rule.with_, Result(route_id, Tri.TRUE, f"Routed to section {rule.to}", evidence=unique)
    return None, [], Result(route_id, Tri.FALSE, "No section applies", evidence=evidence)


def _advisories(ctx: Context, root: Result | None) -> None:
    values = {r.id: r.value for r in root.walk()} if root else {}
    for adv in ctx.policy.advisories:
        when = adv.get("when")
        if not when:
            continue  # raised by a predicate; the entry only carries its text
        ok = True
        if "order_codes" in when:
            ok &= ctx.case.code in when["order_codes"]
        if "diagnosis" in when:
            ok &= ctx.case.has_diagnosis(when["diagnosis"])
        if "not_diagnosis" in when:
            ok &= not ctx.case.has_diagnosis(when["not_diagnosis"])
        if "determination" in when and root is not None:
            ok &= determination_of(root.value) in when["determination"]
        if "route" in when:
            ok &= ctx.shared.get("route") in when["route"]
        if when.get("continuous_order"):
            met = [a for a in when["alternatives"] if values.get(ctx.qualify(a)) == Tri.TRUE]
            ok &= _continuous(ctx.case) and bool(met) and all(a in when["non_continuous"] for a in met)
        if ok:
            ctx.advisories.add(adv["code"])


def _continuous(case) -> bool:
    """Continuous oxygen: a parameter of 24 h/d (UCUM h/d) on the order."""
    for p in case.order_parameters():
        q = p.get("valueQuantity") if isinstance(p.get("valueQuantity"), dict) else None
        if q and (q.get("code") or q.get("unit")) == "h/d" and isinstance(q.get("value"), (int, float)) and q["value"] >= 24:
            return True
    return False


def evaluate(policy, case) -> Evaluation:
    """Evaluate one order under one policy revision: facts in, determination and trace out."""
    ctx = Context(policy, case)
    appl = [r for r in (evaluate_tree(ctx, n) for n in policy.applicability) if r is not None]
    if appl:
        value = COMBINATORS["all"](r.value for r in appl)
        if value != Tri.TRUE:
            # FALSE: not governed (NOT_APPLICABLE); UNKNOWN: documentation naming the applicability item (§13.5).
            root = Result(policy.prefix, value, policy.title, "all", children=appl)
            determination = NOT_APPLICABLE if value == Tri.FALSE else INSUFFICIENT_DOCUMENTATION
            return Evaluation(determination, root, _in_outline_order(policy, deciding(root)), sorted(ctx.advisories))
    to, with_, route_result = _route(ctx)
    ctx.shared["route"] = to
    children = list(appl) + [route_result]
    if to is not None:
        for section in [to] + with_:
            res = evaluate_tree(ctx, policy.sections[section])
            if res is not None:
                children.append(res)
    root = Result(policy.prefix, COMBINATORS["all"](c.value for c in children), policy.title, "all", children=children)
    _advisories(ctx, root)
    decisive = [r for r in deciding(root) if not (r is route_result and r.value == Tri.TRUE)]
    return Evaluation(determination_of(root.value), root, _in_outline_order(policy, decisive), sorted(ctx.advisories), route=to)


def _in_outline_order(policy, results: list[Result]) -> list[Result]:
    """Deciding criteria in the policy's outline order (contract §10.4), /ROUTE first."""
    order = {node_id: i for i, node_id in enumerate(policy.outline())}
    return sorted(results, key=lambda r: order.get(r.id, -1))
