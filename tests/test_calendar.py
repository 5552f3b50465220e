"""Calendar arithmetic of the features, against dateutil's relativedelta (ages, birthdays,
anniversaries; leap days and the new year included)."""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
from dateutil.relativedelta import relativedelta
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.offline import completed_years, days_to_next

DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))
FEB29 = st.sampled_from([date(1960, 2, 29), date(1984, 2, 29), date(2000, 2, 29), date(2004, 2, 29)])


def _sql(born: date, on: date) -> tuple[int, int]:
    b, d = f"DATE '{born}'", f"DATE '{on}'"
    return duckdb.sql(f"SELECT {completed_years(b, d)}, {days_to_next(b, d)}").fetchall()[0]


def _age(born: date, on: date) -> int:
    return relativedelta(on, born).years


def _days_to_birthday(born: date, on: date) -> int:
    """The plain statement: the first day on or after ``on`` on which the age goes up (or ``on`` itself
    when it went up that day)."""
    for k in range(0, 367):
        day = on + timedelta(days=k)
        if _age(born, day) > _age(born, day - timedelta(days=1)):
            return k
    raise AssertionError("no birthday within a year")


@settings(max_examples=300, deadline=None)
@given(born=st.one_of(DATES, FEB29), on=DATES)
def test_age_and_next_birthday_match_relativedelta(born, on):
    if on <= born + timedelta(days=1):
        return
    age, days = _sql(born, on)
    assert age == _age(born, on)
    assert days == _days_to_birthday(born, on)


def test_worked_cases():
    assert _sql(date(1961, 6, 30), date(2026, 6, 30)) == (65, 0), "65 on the 65th birthday, not a day later"
    assert _sql(date(1961, 6, 30), date(2026, 6, 29)) == (64, 1)
    assert _sql(date(2008, 2, 29), date(2026, 2, 27)) == (17, 1), "29 Feb: 18 on 28 Feb in a common year"
    assert _sql(date(2008, 2, 29), date(2026, 2, 28)) == (18, 0)
    assert _sql(date(2008, 2, 29), date(2026, 3, 1)) == (18, 364)
    assert _sql(date(2008, 2, 29), date(2027, 3, 2)) == (19, 364), "next is 29 Feb 2028"
    assert _sql(date(2008, 2, 29), date(2028, 2, 29)) == (20, 0)
    assert _sql(date(1990, 1, 1), date(2026, 12, 31)) == (36, 1), "across the new year"


def test_bank_time_zones_are_region_names():
    import pytest
    from pydantic import ValidationError

    from nba.bank import BankConfig, day_start

    assert BankConfig(time_zone="Asia/Kathmandu").time_zone == "Asia/Kathmandu"
    for bad in ("Asia/Shangai", "posix/Asia/Shanghai", "right/UTC", "localtime", "UTC'; --"):
        with pytest.raises(ValidationError, match="unknown IANA time zone"):
            BankConfig(time_zone=bad)
    # Local midnight as an instant, daylight-saving days included.
    assert str(day_start(date(2026, 3, 8), "America/New_York")) == "2026-03-08 05:00:00"  # EST until 02:00
    assert str(day_start(date(2026, 3, 9), "America/New_York")) == "2026-03-09 04:00:00"  # EDT
    assert str(day_start(date(2026, 6, 30), "Asia/Kathmandu")) == "2026-06-29 18:15:00"
