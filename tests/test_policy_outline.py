"""Every numbered criterion of each policy text has a criterion in the policy data.

The outline IDs below are transcribed from the policy texts in ../shared/seeds (one list per
revision); the test fails when a policy document leaves a numbered item out.
"""
from __future__ import annotations

import pytest

from cds_service.library import load_library
from conftest import REPO


def _expand(spec: str) -> list[str]:
    """'I.B.1.a-d' → I.B.1.a … I.B.1.d; 'II.A.1-8' → II.A.1 … II.A.8; roman numerals listed as is."""
    if "-" not in spec:
        return [spec]
    stem, rng = spec.rsplit(".", 1)
    lo, hi = rng.split("-")
    if lo.isdigit():
        return [f"{stem}.{i}" for i in range(int(lo), int(hi) + 1)]
    romans = ["i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x"]
    if lo in romans and hi in romans and not (len(lo) == 1 and lo not in "iv"):
        return [f"{stem}.{r}" for r in romans[romans.index(lo): romans.index(hi) + 1]]
    return [f"{stem}.{chr(c)}" for c in range(ord(lo), ord(hi) + 1)]


OUTLINES = {
    "CP.MP.190-2023": """
        I I.A I.B I.B.1 I.B.1.a-d I.B.2 I.B.2.a I.B.2.b I.B.2.b.i-iii I.C I.D I.D.1 I.D.2 I.E I.F I.F.1 I.F.2
        II II.A II.A.1-8 II.B II.B.1-3 II.C
        III III.A III.A.1-3 III.A.3.a-b III.B III.B.1 III.B.2
        IV IV.A IV.B IV.B.1 IV.B.1.a-b IV.B.2 IV.C
        V V.A-D
        VI VI.A VI.A.1 VI.A.2 VI.A.2.a-f
    """,
    "CP.MP.190-2022": """
        I I.A I.B I.B.1 I.B.1.a-d I.B.2 I.B.2.a I.B.2.b I.B.2.b.i-iii I.C I.D I.D.1 I.D.2 I.E I.F I.F.1 I.F.2
        II II.A II.A.1-8 II.B II.B.1-3 II.C
        III III.A III.A.1-3 III.A.3.a-b III.B III.B.1 III.B.2
        IV IV.A IV.B IV.B.1 IV.B.1.a-b IV.B.2 IV.C
        V V.A-D
        VI VI.A VI.B VI.C VI.D VI.D.1-6
    """,
    "MC.CP.MP.31-2025": """
        I I.A I.A.1-3 II
    """,
    "CP.MP.173-2024": """
        I I.A I.A.1 I.A.1.a-c I.A.2 I.A.2.a-i I.B I.B.1-5
        II II.A II.A.1 II.A.1.a-d II.A.2 II.A.2.a-i II.B II.B.1-5
    """,
}


@pytest.fixture(scope="module")
def library():
    return load_library(REPO / "policies")


@pytest.mark.parametrize("prefix", sorted(OUTLINES))
def test_every_numbered_item_is_a_criterion(library, prefix):
    policy = library.by_prefix(prefix)
    assert policy is not None, f"{prefix} is not in the policy library"
    expected = [i for spec in OUTLINES[prefix].split() for i in _expand(spec)]
    missing = [i for i in expected if not policy.has_node(i)]
    assert missing == []


def test_expand():
    assert _expand("I.B.2.b.i-iii") == ["I.B.2.b.i", "I.B.2.b.ii", "I.B.2.b.iii"]
    assert _expand("V.A-D") == ["V.A", "V.B", "V.C", "V.D"]
    assert _expand("II.A.1-3") == ["II.A.1", "II.A.2", "II.A.3"]
