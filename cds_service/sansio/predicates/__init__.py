"""Leaf predicates, registered by the names policy documents use.

A predicate is ``fn(ctx, node, params) -> Outcome``: it reads facts from
``ctx.case`` and returns a truth value, the evidence it used and, for UNKNOWN,
what would resolve it.  Policies combine them; a new policy revision that reuses
these names needs no Python change.
"""
from ..engine import PREDICATES
from . import common, cosmetic, masshealth, oxygen, pump  # noqa: F401  (registration side effects)
from .common import APPLIES, condition_applies
from .oxygen import no_valid_test_outcome

__all__ = ["APPLIES", "PREDICATES", "condition_applies", "no_valid_test_outcome"]
