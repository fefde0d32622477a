"""Criteria trees for the console: a revision's criteria as written, and a decision's evaluated tree.

A decision record keeps its evaluated nodes in outline order (``criteria``: ID, value, evidence
references and what the card showed of each node); the tree's shape and each criterion's text come
from the policy revision in the library. ``layout`` places the evaluated tree for the SVG drawing;
``card_of`` renders the card the EHR was shown, from the record, with the service's own card code.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Mapping

from ..sansio import cards as cards_mod
from ..sansio.coverage_info import NOT_APPLICABLE_REASON, TECHNICAL
from ..sansio.engine import (
    INSUFFICIENT_DOCUMENTATION, NOT_APPLICABLE, NOT_MEDICALLY_NECESSARY, SUPPORTED, Evaluation, Evidence, Result,
)
from ..sansio.logic import Tri

STATES = {"TRUE": "met", "FALSE": "not-met", "UNKNOWN": "unknown"}
STATE_LABELS = {"met": "met", "not-met": "not met", "unknown": "unknown", "none": "not recorded"}
# Fill, stroke and text colours of the drawn nodes (text on fill ≥ 7:1, stroke on white ≥ 3:1).
STATE_COLOURS = {
    "met": ("#e3f4e6", "#1b6e2e", "#0c3b17"),
    "not-met": ("#fde8e7", "#b3261e", "#5c0f0b"),
    "unknown": ("#fff1d6", "#8a5300", "#4a2d00"),
    "none": ("#eceff1", "#546e7a", "#263238"),
}
STATE_MARKS = {"met": "✓", "not-met": "✗", "unknown": "?", "none": "–"}


@dataclass
class TreeNode:
    id: str
    short: str
    value: str | None  # TRUE / FALSE / UNKNOWN
    text: str = ""
    op: str | None = None
    evidence: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    resolution: str | None = None
    note: str | None = None
    deciding: bool = False
    children: list["TreeNode"] = field(default_factory=list)
    depth: int = 0
    # layout
    x: float = 0
    y: float = 0
    height: float = 0
    lines: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) beside the node

    @property
    def state(self) -> str:
        return STATES.get(self.value or "", "none")

    @property
    def anchor(self) -> str:
        return "node-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.short)

    def evidence_items(self) -> list[tuple[str | None, str]]:
        """(resource, what it showed) per evidence item; the description without its leading reference."""
        out: list[tuple[str | None, str]] = []
        for i, ref in enumerate(self.evidence):
            text = self.texts[i] if i < len(self.texts) else ""
            out.append((ref, text[len(ref):].strip(" :—-") if text.startswith(ref) else text))
        out += [(None, t) for t in self.texts[len(self.evidence):]]
        return out

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


def short_id(node_id: str, prefix: str | None) -> str:
    if prefix and node_id == prefix:
        return prefix
    if prefix and node_id.startswith(prefix + "/"):
        return node_id[len(prefix) + 1:]
    return node_id


def _route_text(value: str | None) -> str:
    return {"TRUE": "Route to the applicable section", "FALSE": "No section applies"}.get(
        value or "", "Route to the applicable section")


def evaluated_tree(criteria: list[Mapping], policy, deciding: list[str] | None = None) -> TreeNode | None:
    """The evaluated tree of a decision record; None when nothing was evaluated."""
    if not criteria:
        return None
    prefix = policy.prefix if policy is not None else None
    deciding_ids = set(deciding or [])
    nodes: dict[str, TreeNode] = {}
    root: TreeNode | None = None
    orphans: list[TreeNode] = []
    for c in criteria:
        nid = str(c.get("id") or "")
        if not nid or nid in nodes:
            continue
        node = TreeNode(
            id=nid, short=short_id(nid, prefix), value=c.get("value"),
            evidence=list(c.get("evidence") or []), texts=list(c.get("text") or []),
            resolution=c.get("resolution"), note=c.get("note"), deciding=nid in deciding_ids,
        )
        if policy is not None and nid == prefix:
            node.text, node.op = policy.title, "all"
        elif policy is not None and nid == f"{prefix}/ROUTE":
            node.text = _route_text(node.value)
        elif policy is not None and policy.has_node(nid):
            pnode = policy.node(nid)
            node.text, node.op = pnode.text, pnode.op
        nodes[nid] = node
        if root is None and (nid == prefix or policy is None):
            root = node
            continue
        parent = None
        if policy is not None and policy.has_node(nid):
            ancestors = policy.ancestors(nid)
            parent = nodes.get(ancestors[-1].id) if ancestors else None
        (parent.children if parent else orphans).append(node)
    if root is None:
        root = TreeNode(id=prefix or "-", short=prefix or "-", value=None, text=policy.title if policy else "")
    root.children = [c for c in root.children] + [o for o in orphans if o is not root]

    def depths(n: TreeNode, d: int) -> None:
        n.depth = d
        for ch in n.children:
            depths(ch, d + 1)

    depths(root, 0)
    return root


# -- layout of the drawing ----------------------------------------------------------------------
INDENT = 26
BOX_H = 30
LINE_H = 17
ROW_GAP = 12
EVIDENCE_CHARS = 104
ID_CHAR_W = 7.9  # bold 12.5px monospace
STATE_CHAR_W = 6.8  # 11px monospace


def _clip(text: str, limit: int = EVIDENCE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def state_text(n: TreeNode) -> str:
    return (f"{n.op.upper()} · " if n.op else "") + STATE_LABELS[n.state]


def id_text(n: TreeNode) -> str:
    return f"{STATE_MARKS[n.state]} {n.short}" + (" ★" if n.deciding else "")


@dataclass
class Layout:
    root: TreeNode
    nodes: list[TreeNode]
    width: int
    height: int
    evidence_x: int
    box_w: int
    edges: list[str]  # SVG path data, parent to child


def layout(root: TreeNode) -> Layout:
    """Rows in outline order: depth → indentation; the node's evidence to the right of its box."""
    nodes = list(root.walk())
    max_depth = max(n.depth for n in nodes)
    box_w = int(max(len(id_text(n)) * ID_CHAR_W + len(state_text(n)) * STATE_CHAR_W for n in nodes) + 34)
    evidence_x = 16 + max_depth * INDENT + box_w + 24
    y = 12
    for n in nodes:
        lines: list[tuple[str, str]] = [("evidence", t) for t in n.texts]
        if not n.texts and n.evidence:
            lines += [("evidence", ref) for ref in n.evidence]
        if n.resolution:
            lines.append(("resolution", "needs " + n.resolution))
        if n.note:
            lines.append(("note", n.note))
        if not lines and n.text:
            lines.append(("text", n.text))  # the criterion's policy text, in grey
        n.lines = [(kind, _clip(text)) for kind, text in lines]
        n.x = 16 + n.depth * INDENT
        n.y = y
        n.height = max(BOX_H, 20 + (len(n.lines) - 1) * LINE_H + 8)
        y += n.height + ROW_GAP
    edges = []
    for n in nodes:
        for ch in n.children:
            x0 = n.x + 12
            edges.append(f"M{x0:.0f},{n.y + BOX_H:.0f} V{ch.y + BOX_H / 2:.0f} H{ch.x:.0f}")
    width = evidence_x + EVIDENCE_CHARS * 7.3 + 16
    return Layout(root, nodes, int(width), int(y), int(evidence_x), box_w, edges)


# -- a revision's criteria as written -----------------------------------------------------------
def param_items(params: Mapping) -> list[tuple[str, str, bool, list[str]]]:
    """(name, value, is_threshold, value sets named) of a criterion's parameters, for display."""
    from ..library import VALUE_SET_PARAMS

    out = []
    for key, value in (params or {}).items():
        if isinstance(value, Mapping):
            shown = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            shown = ", ".join(str(v) for v in value)
        else:
            shown = str(value)
        threshold = isinstance(value, (int, float)) and not isinstance(value, bool) or (
            isinstance(value, Mapping) and any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()))
        sets = [v for v in ([value] if isinstance(value, str) else value if isinstance(value, list) else [])
                if isinstance(v, str)] if key in VALUE_SET_PARAMS else []
        out.append((key, shown, bool(threshold), sets))
    return out


def value_sets_of(policy, doc: Mapping | None, valuesets) -> list[str]:
    """Value sets a revision names (criteria, routing, advisories, episode members), with what they include."""
    from ..library import VALUE_SET_PARAMS

    found: list[str] = []

    def add(value) -> None:
        for vs in [value] if isinstance(value, str) else value or []:
            if isinstance(vs, str) and vs in valuesets and vs not in found:
                found.append(vs)
                for inner in valuesets.get(vs).includes:
                    add(inner)

    for node in policy.all_nodes():
        for key in VALUE_SET_PARAMS:
            add(node.params.get(key))
        for value in (node.applies or {}).values():
            add(value if isinstance(value, (str, list)) else None)
    for rule in policy.route:
        for cond in rule.when:
            for key in VALUE_SET_PARAMS:
                add((cond.get("params") or {}).get(key))
    for adv in policy.advisories:
        for key in ("diagnosis", "not_diagnosis"):
            add((adv.get("when") or {}).get(key))
    add(policy.episode_members.get("medication_value_sets"))
    return found


# -- the card the EHR was shown -------------------------------------------------------------------
def _results(root: TreeNode) -> dict[str, Result]:
    out: dict[str, Result] = {}

    def build(n: TreeNode) -> Result:
        evidence = [Evidence(ref, n.texts[i] if i < len(n.texts) else ref) for i, ref in enumerate(n.evidence)]
        r = Result(n.id, Tri(n.value) if n.value in STATES else Tri.UNKNOWN, n.text, n.op, evidence,
                   n.resolution, n.note, [build(c) for c in n.children])
        out[n.id] = r
        return r

    build(root)
    return out


def _reason(determination: str, policy, deciding: list[Result]) -> str | None:
    """The card's reason line (as ``sansio.hook`` words it), used when no criterion decides."""
    if policy is None or determination == SUPPORTED:
        return None
    leaves = [r for r in deciding if not r.children] or list(deciding)
    ids = ", ".join(r.id for r in leaves)
    if determination == NOT_MEDICALLY_NECESSARY:
        unmet = [r.id for r in leaves if r.value == Tri.FALSE]
        applies = [r.id for r in leaves if r.value == Tri.TRUE]
        parts = ([f"{', '.join(unmet)} not met"] if unmet else []) + ([f"{', '.join(applies)} applies"] if applies else [])
        return f"Not medically necessary under {policy.display}: {'; '.join(parts)}"
    if determination == INSUFFICIENT_DOCUMENTATION:
        return f"Documentation needed under {policy.display}: {ids}"
    if determination == NOT_APPLICABLE:
        return f"Not governed under {policy.display}: {ids}" if deciding else NOT_APPLICABLE_REASON
    return None


def card_of(decision: Mapping, library, questionnaire_endpoint: str | None, code_base: str) -> dict:
    """The card of a decision as the EHR was shown it, rendered again from the record by the service's
    card code (``sansio.cards``): same summary, indicator, detail, links and override reasons.
    Not kept in the record, so not shown: a TECHNICAL_FAILURE's reason (which data could not be had)."""
    policy = library.by_prefix(decision.get("revision")) if decision.get("revision") else None
    payer = library.payers.get(decision.get("payer") or "")
    determination = decision["determination"]
    evaluation = None
    root = evaluated_tree(decision.get("criteria") or [], policy, decision.get("deciding"))
    if root is not None and policy is not None and determination != TECHNICAL:
        results = _results(root)
        deciding = [results[i] for i in decision.get("deciding") or [] if i in results]
        evaluation = Evaluation(determination, results.get(root.id), deciding, list(decision.get("advisories") or []))
    code = decision.get("code")
    label = ""
    if policy is not None:
        role = policy.role_of(code) if code else None
        label = policy.label_of(role) if role else (f"(episode of {decision['episodeOf']})" if decision.get("episodeOf") else "")
    reason = _reason(determination, policy, evaluation.deciding if evaluation else [])
    if determination == TECHNICAL:
        reason = "(which data could not be retrieved is not kept in the decision record)"
    elif policy is None and determination == NOT_APPLICABLE:
        reason = NOT_APPLICABLE_REASON
    attest = (determination == INSUFFICIENT_DOCUMENTATION and evaluation is not None and any(
        r.value == Tri.UNKNOWN and not r.children and r.resolution and "Questionnaire item" in r.resolution
        for r in evaluation.deciding))
    hook = (decision.get("call") or {}).get("hook")
    ci = cards_mod.CardInput(
        determination=determination, order_ref=decision.get("order") or "", code=code, label=label,
        payer_name=payer.name if payer else "Coverage Requirements Discovery",
        policy_display=policy.display if policy else None, policy_url=policy.url if policy else None,
        prefix=policy.prefix if policy else None,
        t0=date.fromisoformat(decision["t0"]) if decision.get("t0") else None,
        r=date.fromisoformat(decision["r"]) if decision.get("r") else None,
        evaluation=evaluation, reason=reason, advisories=list(decision.get("advisories") or []),
        advisory_texts={a["code"]: a["text"] for a in (policy.advisories if policy else [])},
        code_base=code_base,
        questionnaire_link=f"{questionnaire_endpoint}/{policy.prefix}"
        if attest and questionnaire_endpoint and hook != "order-select" else None,
    )
    card_uuid = decision.get("cardUuid")
    fixed = uuid.UUID(card_uuid) if card_uuid and _is_uuid(card_uuid) else uuid.uuid4()
    card = cards_mod.card(ci, "2.0.1", decision.get("payer"), lambda: fixed)
    card["uuid"] = card_uuid or card["uuid"]
    return card


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
        return True
    except ValueError:
        return False
