"""MassHealth MG-OXY predicates (oxygen, Appendix A)."""
from __future__ import annotations
