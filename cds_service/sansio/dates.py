"""FHIR date handling: date parts as written, no time-zone conversion (contract §1).

A FHIR date may be partial (``2015``, ``2015-06``); :class:`PartialDate` keeps the
precision so that an age threshold is decided only when every date the value
allows falls on the same side (contract §13.10).
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$"
)


@dataclass(frozen=True)
class PartialDate:
    year: int
    month: int | None = None
    day: int | None = None

    @property
    def earliest(self) -> date:
        return date(self.year, self.month or 1, self.day or 1)

    @property
    def latest(self) -> date:
        month = self.month or 12
        day = self.day or calendar.monthrange(self.year, month)[1]
        return date(self.year, month, day)

    @property
    def is_full(self) -> bool:
        return self.day is not None


def parse_partial(value: object) -> PartialDate | None:
    """Parse a FHIR date/dateTime, keeping its precision; None if unusable."""
    if not isinstance(value, str):
        return None
    m = _DATE.match(value.strip())
    if not m:
        return None
    try:
        year = int(m.group(1))
        month = int(m.group(2)) if m.group(2) else None
        day = int(m.group(3)) if m.group(3) else None
        pd = PartialDate(year, month, day)
        pd.latest  # validates month/day ranges
        if day is not None:
            date(year, month, day)
        return pd
    except ValueError:
        return None


# A well-formed date or dateTime: the fast path of parse_date and parse_instant (the general path
# gives the same answer on it, tests/test_dates.py checks so on generated strings).
_FULL = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?")


def parse_date(value: object) -> date | None:
    """The calendar date of a FHIR date or dateTime as written; None if not a full date."""
    if isinstance(value, str):
        m = _FULL.fullmatch(value)
        if m:
            try:
                return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            except ValueError:
                return None
    return _parse_date_general(value)


def _parse_date_general(value: object) -> date | None:
    pd = parse_partial(value)
    return pd.earliest if pd and pd.is_full else None


def parse_instant(value: object) -> tuple[date, str] | None:
    """Sort key for same-day ordering: (date, local time text) without tz conversion."""
    if isinstance(value, str):
        # Fast path for the common well-formed date or dateTime; anything else takes the general one.
        m = _FULL.fullmatch(value)
        if m:
            y, mo, dd, hh, mi, ss = m.groups()
            try:
                d = date(int(y), int(mo), int(dd))
            except ValueError:
                return None
            return d, (f"{hh}:{mi}:{ss or '00'}" if hh else "")
    return _parse_instant_general(value)


def _parse_instant_general(value: object) -> tuple[date, str] | None:
    d = _parse_date_general(value)
    if d is None:
        return None
    m = _DATETIME.match(value.strip()) if isinstance(value, str) else None
    clock = f"{m.group(4)}:{m.group(5)}:{m.group(6) or '00'}" if m else ""
    return d, clock


def add_days(d: date, days: int) -> date:
    return d + timedelta(days=days)


def in_window(d: date | None, start: date, end: date) -> bool:
    return d is not None and start <= d <= end


def completed_years(birth: date, on: date) -> int:
    """Completed years on a date; a member is N on their Nth birthday (INT-02).

    A 29 February birthday is reached on 1 March in common years.
    """
    years = on.year - birth.year
    if (on.month, on.day) < (birth.month, birth.day):
        years -= 1
    return years


def age_at_least(birth: PartialDate | None, years: int, on: date) -> bool | None:
    """Whether age on ``on`` is >= years; None when the (partial) birth date cannot tell."""
    if birth is None:
        return None
    oldest = completed_years(birth.earliest, on) >= years
    youngest = completed_years(birth.latest, on) >= years
    return oldest if oldest == youngest else None


def iso(d: date | None) -> str:
    return d.isoformat() if d else "undated"


def today_in(tz_name: str, now: datetime) -> date:
    """Today's date in a configured zone, from an injected clock reading."""
    from zoneinfo import ZoneInfo

    return now.astimezone(ZoneInfo(tz_name)).date()
