"""Attestations: answers in the patient's QuestionnaireResponses (contract §9).

``linkId`` equals the criterion ID; items match at any depth; the first answer of
an item counts; across responses the latest ``authored`` wins; an answer of the
wrong type is ignored; an F90 answer authored outside [T0 − 90, today] is stale.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Iterable, Mapping

from .dates import add_days, parse_date, parse_instant

ANSWER_KEYS = {
    "boolean": ("valueBoolean",),
    "integer": ("valueInteger",),
    "decimal": ("valueDecimal", "valueInteger"),
    "date": ("valueDate", "valueDateTime"),
}


@dataclass(frozen=True)
class Answer:
    link_id: str
    value: object  # bool, int, float or date
    source: str  # QuestionnaireResponse/{id}
    authored: date | None
    stale: bool = False

    def describe(self) -> str:
        value = self.value.isoformat() if isinstance(self.value, date) else (
            str(self.value).lower() if isinstance(self.value, bool) else f"{self.value:g}" if isinstance(self.value, float) else str(self.value)
        )
        when = self.authored.isoformat() if self.authored else "undated"
        return f"{self.source} item `{self.link_id}` = {value} (authored {when})"


def _walk(items: object) -> Iterable[Mapping]:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            yield item
            yield from _walk(item.get("item"))
            for ans in item.get("answer") or [] if isinstance(item.get("answer"), list) else []:
                if isinstance(ans, dict):
                    yield from _walk(ans.get("item"))


def _coerce(answer: Mapping, kind: str) -> object:
    for key in ANSWER_KEYS[kind]:
        if key not in answer:
            continue
        value = answer[key]
        if kind == "boolean" and isinstance(value, bool):
            return value
        if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "decimal" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind == "date":
            d = parse_date(value)
            if d is not None:
                return d
    return None


class Attestations:
    """Index of the latest answer per linkId, by type and freshness on demand."""

    def __init__(self, responses: Iterable[Mapping], prefix: str, t0: date, today: date):
        self.t0, self.today, self.prefix = t0, today, prefix
        self._items: dict[str, list[tuple[tuple, Mapping, str, date | None]]] = {}
        for qr in responses:
            if qr.get("status") not in ("completed", "amended"):
                continue
            authored = parse_instant(qr.get("authored"))
            source = f"QuestionnaireResponse/{qr.get('id')}"
            for item in _walk(qr.get("item")):
                link = item.get("linkId")
                answers = item.get("answer")
                if not isinstance(link, str) or not link.startswith(prefix + "/") or not isinstance(answers, list) or not answers:
                    continue
                if not isinstance(answers[0], dict):
                    continue
                key = authored or (date.min, "")
                self._items.setdefault(link, []).append((key, answers[0], source, authored[0] if authored else None))

    def get(self, link_id: str, kind: str, freshness: str = "F90") -> Answer | None:
        """The answer that counts, or a stale marker (``stale=True``) or None if unanswered."""
        full = link_id if link_id.startswith(self.prefix + "/") else f"{self.prefix}/{link_id}"
        stale_seen = None
        for key, answer, source, authored in sorted(self._items.get(full, []), key=lambda t: t[0], reverse=True):
            value = _coerce(answer, kind)
            if value is None:
                continue
            if freshness == "F90" and not (authored and add_days(self.t0, -90) <= authored <= self.today):
                stale_seen = stale_seen or Answer(full, value, source, authored, stale=True)
                continue
            return Answer(full, value, source, authored)
        return stale_seen
