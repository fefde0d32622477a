"""A policy revision as loaded from its document (pure data → objects).

Reading files and schema validation happen in ``cds_service.library``; this
module turns one already-validated document into a :class:`Policy`, qualifying
every criterion ID with the revision's prefix (``CP.MP.190-2023/I.B.1.a``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Iterable, Mapping

from .engine import Node


@dataclass(frozen=True)
class Item:
    """An attestable Questionnaire item (contract §9.3)."""

    link_id: str
    type: str  # boolean / integer / decimal / date
    freshness: str  # F90 / ANY
    text: str


@dataclass
class RouteRule:
    to: str
    when: list[dict]
    with_: list[str]


@dataclass
class Policy:
    policy_id: str  # CP.MP.190
    revision: str  # 01/23
    prefix: str  # CP.MP.190-2023
    title: str
    payer: str
    url: str
    effective_start: date
    effective_end: date | None
    orders: dict[str, list[str]]  # role -> codes
    order_family: str
    order_labels: dict[str, str]
    settings: dict
    route: list[RouteRule]
    applicability: list[Node]
    sections: dict[str, Node]
    items: dict[str, Item]
    advisories: list[dict]
    episode_members: dict = field(default_factory=dict)
    source_file: str = ""
    _index: dict[str, Node] = field(default_factory=dict)
    _parents: dict[str, str] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return f"{self.policy_id} rev {self.revision}"

    def qualify(self, short_id: str) -> str:
        return short_id if short_id.startswith(self.prefix + "/") else f"{self.prefix}/{short_id}"

    def node(self, node_id: str) -> Node:
        return self._index[self.qualify(node_id)]

    def has_node(self, node_id: str) -> bool:
        return self.qualify(node_id) in self._index

    def ancestors(self, node_id: str) -> list[Node]:
        out = []
        current = self._parents.get(self.qualify(node_id))
        while current:
            out.append(self._index[current])
            current = self._parents.get(current)
        return list(reversed(out))

    def in_effect(self, t0: date) -> bool:
        return self.effective_start <= t0 and (self.effective_end is None or t0 <= self.effective_end)

    def role_of(self, code: str) -> str | None:
        for role, codes in self.orders.items():
            if code in codes:
                return role
        return None

    def label_of(self, role: str) -> str:
        return self.order_labels.get(role, f"{role.replace('-', ' ')} ({self.order_family})")

    @property
    def data_keys(self) -> list[str]:
        return list(self.settings.get("data") or [])

    def outline(self) -> list[str]:
        """Criterion IDs in document order (applicability, then sections as written)."""
        return list(self._index)

    def all_nodes(self) -> Iterable[Node]:
        return self._index.values()


def build_node(data: Mapping, prefix: str) -> Node:
    nid = data["id"]
    node = Node(
        id=nid if nid.startswith(prefix + "/") else f"{prefix}/{nid}",
        text=" ".join(str(data.get("text", "")).split()),
        op=data.get("op"),
        predicate=data.get("predicate"),
        params=dict(data.get("params") or {}),
        applies=dict(data.get("applies") or {}),
        scope=dict(data.get("scope") or {}),
        block=bool(data.get("block", False)),
    )
    node.children = [build_node(c, prefix) for c in data.get("children") or []]
    return node


def build_policy(doc: Mapping, source_file: str = "") -> Policy:
    prefix = doc["prefix"]
    eff = doc["effective"]
    sections = {s["id"]: build_node(s, prefix) for s in doc["criteria"]}
    applicability = [build_node(a, prefix) for a in doc.get("applicability") or []]
    items = {}
    for it in doc.get("questionnaire") or []:
        link = it["linkId"] if it["linkId"].startswith(prefix + "/") else f"{prefix}/{it['linkId']}"
        items[link] = Item(link, it["type"], it.get("freshness", "F90"), " ".join(it["text"].split()))
    policy = Policy(
        policy_id=doc["policy"],
        revision=doc["revision"],
        prefix=prefix,
        title=doc["title"],
        payer=doc["payer"],
        url=doc["url"],
        effective_start=date.fromisoformat(str(eff["start"])),
        effective_end=date.fromisoformat(str(eff["end"])) if eff.get("end") else None,
        orders={k: list(v) for k, v in doc["orders"]["roles"].items()},
        order_family=doc["orders"]["family"],
        order_labels=dict(doc["orders"].get("labels") or {}),
        settings={**dict(doc.get("settings") or {}), "data": list(doc.get("data") or [])},
        route=[RouteRule(r["to"], list(r.get("when") or []), list(r.get("with") or [])) for r in doc["route"]],
        applicability=applicability,
        sections=sections,
        items=items,
        advisories=list(doc.get("advisories") or []),
        episode_members=dict(doc.get("episode_members") or {}),
        source_file=source_file,
    )

    def index(node: Node, parent: str | None) -> None:
        if node.id in policy._index:
            raise ValueError(f"duplicate criterion ID {node.id}")
        policy._index[node.id] = node
        if parent:
            policy._parents[node.id] = parent
        for c in node.children:
            index(c, node.id)

    for node in applicability + list(sections.values()):
        index(node, None)
    return policy
