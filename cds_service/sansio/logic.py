"""Three-valued (Kleene) logic used by every criterion (contract §10.1)."""
from __future__ import annotations

from enum import Enum
from typing import Iterable


class Tri(str, Enum):
    TRUE = "TRUE"
    FALSE = "FALSE"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def of(cls, value: bool | None) -> "Tri":
        if value is None:
            return cls.UNKNOWN
        return cls.TRUE if value else cls.FALSE

    def __invert__(self) -> "Tri":
        return {Tri.TRUE: Tri.FALSE, Tri.FALSE: Tri.TRUE}.get(self, Tri.UNKNOWN)


def all_of(values: Iterable[Tri]) -> Tri:
    values = list(values)
    if Tri.FALSE in values:
        return Tri.FALSE
    if Tri.UNKNOWN in values:
        return Tri.UNKNOWN
    return Tri.TRUE


def any_of(values: Iterable[Tri]) -> Tri:
    values = list(values)
    if Tri.TRUE in values:
        return Tri.TRUE
    if Tri.UNKNOWN in values:
        return Tri.UNKNOWN
    return Tri.FALSE


def none_of(values: Iterable[Tri]) -> Tri:
    """Exclusions: FALSE when any member applies (is TRUE)."""
    values = list(values)
    if Tri.TRUE in values:
        return Tri.FALSE
    if Tri.UNKNOWN in values:
        return Tri.UNKNOWN
    return Tri.TRUE


COMBINATORS = {"all": all_of, "any": any_of, "none": none_of}
