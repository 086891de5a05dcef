"""The station's count of its last hour (…/stats last_hour), in one-minute buckets."""

from __future__ import annotations

from inspectd.inspection import LastHour
from inspectd.verdict import Verdict, iso_utc

T0 = 1_700_000_000.0  # 20 s into a minute: buckets are not aligned with the test's times


def test_counts_the_last_hour_by_whole_minutes_and_keeps_the_newest_seq() -> None:
    hour = LastHour(started=T0)
    hour.add(Verdict.OK, 1, T0 + 1)
    hour.add(Verdict.NG, 2, T0 + 30)
    hour.add(Verdict.OK, 3, T0 + 61)
    hour.add(Verdict.ERROR, 0, T0 + 62)  # not stored (no seq): counted, seq unchanged
    snap = hour.snapshot(T0 + 120)
    assert snap == {"OK": 2, "NG": 1, "ERROR": 1, "since": iso_utc(T0), "through_seq": 3}

    # an hour and a half later only the minutes of the last hour are left
    hour.add(Verdict.NG, 4, T0 + 3000)
    snap = hour.snapshot(T0 + 3700)
    window = (int((T0 + 3700 - 3600) // 60) + 1) * 60.0
    assert snap["since"] == iso_utc(window) and window > T0
    assert (snap["OK"], snap["NG"], snap["ERROR"], snap["through_seq"]) == (0, 1, 0, 4)


def test_a_clock_stepped_back_counts_into_the_current_minute() -> None:
    hour = LastHour(started=T0)
    hour.add(Verdict.OK, 1, T0 + 600)
    hour.add(Verdict.NG, 2, T0 + 5)  # wall clock stepped back ten minutes
    assert hour.snapshot(T0 + 601)["NG"] == 1
    assert hour.snapshot(T0 + 601 + 3540)["NG"] == 1  # it ages with the minute it went into
    assert hour.snapshot(T0 + 600 + 3660)["NG"] == 0
