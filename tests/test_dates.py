"""The date fast paths (``parse_date``, ``parse_instant``) answer exactly as the general parser does."""
from __future__ import annotations

from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.sansio import dates

digits = st.text(alphabet="0123456789", min_size=1, max_size=4)
parts = st.lists(st.one_of(digits, st.sampled_from(["-", "T", ":", ".", "Z", "+", " ", "02", "29", "30", "31", "13",
                                                      "00", "24", "60", "\n", "٣"])), max_size=14)
well_formed = st.builds(
    lambda y, m, d, t, tz: f"{y:04d}-{m:02d}-{d:02d}{t}{tz if t else ''}",
    st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32),
    st.sampled_from(["", "T10:11", "T23:59:59", "T00:00:00.123456", "T25:61:61"]),
    st.sampled_from(["", "Z", "+02:00", "-05:30", "+0200"]),
)


def general_instant(value):
    return dates._parse_instant_general(value)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(well_formed, parts.map("".join), st.none(), st.integers()))
def test_fast_paths_agree_with_the_general_parser(value):
    assert dates.parse_date(value) == dates._parse_date_general(value)
    assert dates.parse_instant(value) == general_instant(value)


def test_examples():
    assert dates.parse_instant("2024-01-05T10:11:12.5+02:00") == (date(2024, 1, 5), "10:11:12")
    assert dates.parse_instant("2024-01-05") == (date(2024, 1, 5), "")
    assert dates.parse_date("2024-02-30") is None
    assert dates.parse_date(" 2024-01-05") == date(2024, 1, 5)  # the general path strips
    assert dates.parse_date("2024-01") is None
