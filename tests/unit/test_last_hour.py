"""The station's count of its last hour (…/stats last_hour), in one-minute buckets."""

from __future__ import annotations

from inspectd.contract.verdict import Verdict, iso_utc
from inspectd.inspection import LastHour

T0 = 1_700_000_000.0  # wall time at the start, 20 s into a minute
M0 = 5_000.0 + 20.0  # monotonic time at the start, 20 s into a minute: buckets not aligned


class Clocks:
    """A monotonic and a wall clock that the test moves (together, or the wall alone)."""

    def __init__(self) -> None:
        self.mono, self.wall = M0, T0

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


def test_counts_the_last_hour_by_whole_minutes_and_keeps_the_newest_seq() -> None:
    c = Clocks()
    hour = LastHour(lambda: c.mono, lambda: c.wall)
    for verdict, seq, at in ((Verdict.OK, 1, 1), (Verdict.NG, 2, 29), (Verdict.OK, 3, 31)):
        c.advance(at)
        hour.add(verdict, seq)
    c.advance(1)
    hour.add(Verdict.ERROR, 0)  # not stored (no seq): counted, seq unchanged
    c.advance(58)
    snap = hour.snapshot()
    assert snap == {"OK": 2, "NG": 1, "ERROR": 1, "since": iso_utc(T0), "through_seq": 3}

    # an hour and a half later only the minutes of the last hour are left
    c.advance(3000 - 120)
    hour.add(Verdict.NG, 4)
    c.advance(700)
    snap = hour.snapshot()
    window = (int((c.mono - 3600) // 60) + 1) * 60.0
    assert snap["since"] == iso_utc(c.wall - (c.mono - window)) and window > M0
    assert (snap["OK"], snap["NG"], snap["ERROR"], snap["through_seq"]) == (0, 1, 0, 4)


def test_a_wall_clock_step_neither_drops_nor_doubles_minutes() -> None:
    """Forward (the undercount seen: 350 of 384 parts after a step) and back: the count is
    the parts of the last hour of elapsed time whatever the wall clock did meanwhile."""
    c = Clocks()
    hour = LastHour(lambda: c.mono, lambda: c.wall)
    for _ in range(384):  # one part every 9 s: 57.6 minutes
        hour.add(Verdict.OK, 1)
        c.advance(9)
    c.wall += 600  # NTP steps the wall clock ten minutes forward
    assert hour.snapshot()["OK"] == 384
    c.wall -= 1200  # and twenty back
    assert hour.snapshot()["OK"] == 384
    c.advance(3600)  # an hour later none is left
    assert hour.snapshot()["OK"] == 0
