"""MC.CP.MP.31 cosmetic and reconstructive procedure predicates."""
from __future__ import annotations
