"""Counts the way a line counts, from the verdicts this page received: the current shift (shift
starts from the page's config), the current product (reset when the station switches), the
last hour minute by minute (the trend), why parts were rejected, the run of rejects in a row,
and the recent rate.

A page counts what it saw: one started mid-shift says from when (``counted_from``). Verdicts
are placed by their own ``t_verdict``, so a late duplicate lands in its own shift, not the
current one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

RATE_WINDOW_S = 60.0  # parts/min from the parts of the last minute
TREND_MINUTES = 60
KINDS = ("OK", "NG", "ERROR")
# size classes of a reject's largest region, in frame pixels (area)
SIZES = ((100, "small (< 100 px)"), (2500, "medium (< 2500 px)"), (float("inf"), "large"))
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding it: an overlay is drawn on
    the whole frame, so its size is the frame's (where on the part a region lies)."""
    i = 2
    while i + 9 < len(data) and data[:2] == b"\xff\xd8":
        if data[i] != 0xFF:
            return None
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(
                data[i + 5 : i + 7], "big"
            )
        i += 2 + length
    return None


def position_of(v: dict[str, Any], frame: tuple[int, int] | None) -> tuple[int, int] | None:
    """(row, column) of a 3 x 3 grid over the frame holding the centre of the part's largest
    region; None without a region or a known frame size."""
    regions = [r for r in v.get("regions") or [] if isinstance(r, dict)]
    if not regions or frame is None:
        return None
    r = max(regions, key=lambda r: float(r.get("area") or 0))
    try:
        cx, cy = float(r["x"]) + float(r["w"]) / 2, float(r["y"]) + float(r["h"]) / 2
    except (KeyError, TypeError, ValueError):
        return None
    w, h = frame
    return min(2, max(0, int(3 * cy / h))), min(2, max(0, int(3 * cx / w)))


def _blank() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


def with_yield(counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts[k] for k in KINDS)
    return {**counts, "total": total, "yield": counts["OK"] / total if total else None}


def shift_start(t: float, starts: list[tuple[str, time]], tz: ZoneInfo | None) -> tuple[str, float]:
    """(name, start as epoch) of the shift instant ``t`` falls in: the latest start at or before
    it, yesterday's last when it is before today's first."""
    local = datetime.fromtimestamp(t, tz).astimezone(tz)
    day = local.date()
    best: tuple[str, datetime] | None = None
    for offset in (0, -1):
        d = day + timedelta(days=offset)
        for name, start in starts:
            at = datetime.combine(d, start, tzinfo=local.tzinfo)
            if at <= local and (best is None or at > best[1]):
                best = (name, at)
        if best is not None:
            break
    assert best is not None  # yesterday always has a start at or before now
    return best[0], best[1].timestamp()


def reason_of(v: dict[str, Any]) -> str:
    """Why a part was rejected, in a few words: its ERROR reason, or its largest region's size."""
    if v.get("verdict") == "ERROR":
        error = str(v.get("error") or "no reason given")
        return "ERROR: " + error.split(":", 1)[0].strip()[:48]
    regions = [r for r in v.get("regions") or [] if isinstance(r, dict)]
    if not regions:
        return "NG: score only (no region)"
    area = max(float(r.get("area") or 0) for r in regions)
    return "NG: " + next(name for limit, name in SIZES if area < limit) + " region"


@dataclass(frozen=True)
class Counting:
    """How the page counts (from its config): shift starts, their time zone, the alarm."""

    starts: list[tuple[str, time]] | None = None
    tz: ZoneInfo | None = None  # None: the server's local time
    alarm_in_a_row: int = 0  # 0: no alarm

    def tally(self, now: float) -> Tally:
        return Tally(self.starts, self.tz, self.alarm_in_a_row, now)


class Tally:
    """One station's counts. ``starts``: the shifts (name, local start time), None: no shifts."""

    def __init__(
        self,
        starts: list[tuple[str, time]] | None,
        tz: ZoneInfo | None,
        alarm_in_a_row: int,
        now: float,
    ) -> None:
        self.starts, self.tz, self.alarm_in_a_row = starts, tz, alarm_in_a_row
        self.counted_from = now  # this page's first look at the station
        self.shift: dict[str, Any] | None = None  # {name, start, counts, reasons}
        self.previous_shift: dict[str, Any] | None = None
        self.product: dict[str, Any] | None = None  # {name, since, counts}
        self.previous_product: dict[str, Any] | None = None
        self.minutes: deque[tuple[int, dict[str, int]]] = deque()  # (epoch minute, counts)
        self.recent: deque[float] = deque()  # t_verdict of the last minute's parts
        self.in_a_row = 0  # NG and ERROR since the last OK
        self.frame: tuple[int, int] | None = None  # (width, height), from an overlay
        # rejects of this shift that came before the first overlay said the frame's size
        self._unplaced: deque[dict[str, Any]] = deque(maxlen=100)

    def frame_size(self, size: tuple[int, int] | None) -> None:
        """The frame's size, from an overlay (its JPEG header); places the rejects that waited
        for it (the first reject's overlay follows its verdict)."""
        if size is None:
            return
        self.frame = size
        while self._unplaced:
            self._place(self._unplaced.popleft())

    def _place(self, v: dict[str, Any]) -> None:
        at = position_of(v, self.frame)
        if self.shift is not None and at is not None:
            self.shift["positions"][at[0]][at[1]] += 1

    @property
    def alarm(self) -> bool:
        return self.alarm_in_a_row > 0 and self.in_a_row >= self.alarm_in_a_row

    def add(self, v: dict[str, Any], t: float) -> None:
        kind = str(v.get("verdict"))
        if kind not in KINDS:
            return
        self._add_shift(v, kind, t)
        self._add_product(v, kind, t)
        self._add_minute(kind, t)
        self.recent.append(t)
        self.in_a_row = 0 if kind == "OK" else self.in_a_row + 1

    def _add_shift(self, v: dict[str, Any], kind: str, t: float) -> None:
        if not self.starts:
            return
        name, start = shift_start(t, self.starts, self.tz)
        if self.shift is None or start > self.shift["start"]:
            self.previous_shift = self.shift
            self.shift = _new_shift(name, start)
            self._unplaced.clear()  # they belong to the shift that ended
        if start != self.shift["start"]:
            return  # a late part of an earlier shift: that shift's count is closed
        self.shift["counts"][kind] += 1
        if kind != "OK":
            reason = reason_of(v)
            self.shift["reasons"][reason] = self.shift["reasons"].get(reason, 0) + 1
            if self.frame is None:
                self._unplaced.append(v)
            else:
                self._place(v)

    def _add_product(self, v: dict[str, Any], kind: str, t: float) -> None:
        name = v.get("product")
        if not isinstance(name, str):
            return
        if self.product is None or self.product["name"] != name:
            self.previous_product = self.product
            self.product = {"name": name, "since": t, "counts": _blank()}
        self.product["counts"][kind] += 1

    def _add_minute(self, kind: str, t: float) -> None:
        minute = int(t // 60)
        if not self.minutes or self.minutes[-1][0] < minute:
            self.minutes.append((minute, _blank()))
        for m, counts in reversed(self.minutes):
            if m == minute:
                counts[kind] += 1
                break
        while self.minutes and self.minutes[0][0] <= minute - TREND_MINUTES:
            self.minutes.popleft()

    def per_min(self, now: float, online: bool) -> float | None:
        """Parts a minute over the last minute's parts (their own spacing, so two parts 3 s
        apart read 20/min, not an average since the first part); None when fewer than two
        arrived in the last minute or the station is not running."""
        while self.recent and self.recent[0] < now - RATE_WINDOW_S:
            self.recent.popleft()
        if not online or len(self.recent) < 2:
            return None
        span = max(self.recent) - min(self.recent)
        return (len(self.recent) - 1) / span * 60.0 if span > 0 else None

    def view(self, now: float, online: bool) -> dict[str, Any]:
        minute = int(now // 60)
        by_minute = {m: c for m, c in self.minutes}
        current, previous = self.shift, self.previous_shift
        if self.starts:  # a shift that began with no part yet counts from zero
            name, start = shift_start(now, self.starts, self.tz)
            if current is None or start > current["start"]:
                current, previous = _new_shift(name, start), current or previous
        return {
            "counted_from": self.counted_from,
            "per_min": self.per_min(now, online),
            "shift": _shift_view(current),
            "previous_shift": _shift_view(previous),
            "product": _product_view(self.product),
            "previous_product": _product_view(self.previous_product),
            "trend": [
                with_yield(by_minute.get(m, _blank()))
                for m in range(minute - TREND_MINUTES + 1, minute + 1)
            ],
            "in_a_row": self.in_a_row,
            "alarm": self.alarm,
        }


def _new_shift(name: str, start: float) -> dict[str, Any]:
    # positions: NG parts by where their largest region lies, rows top to bottom
    positions = [[0] * len(COLUMNS) for _ in ROWS]
    return {"name": name, "start": start, "counts": _blank(), "reasons": {}, "positions": positions}


def _shift_view(shift: dict[str, Any] | None) -> dict[str, Any] | None:
    if shift is None:
        return None
    reasons = sorted(shift["reasons"].items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "name": shift["name"],
        "start": shift["start"],
        **with_yield(shift["counts"]),
        "reasons": [{"reason": r, "n": n} for r, n in reasons],
        "positions": [list(row) for row in shift["positions"]],
    }


def _product_view(product: dict[str, Any] | None) -> dict[str, Any] | None:
    if product is None:
        return None
    return {"name": product["name"], "since": product["since"], **with_yield(product["counts"])}
