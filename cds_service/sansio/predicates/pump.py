"""CP.MP.173 implantable intrathecal/epidural pain pump predicates."""
from __future__ import annotations
