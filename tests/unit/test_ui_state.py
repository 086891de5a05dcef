"""The UI's picture of a station from what it publishes: when a quiet station is flagged.
The page itself is tested in chromium (tests/daemon/test_ui.py)."""

from __future__ import annotations

import json
import time
from datetime import time as dt_time

import pytest

from inspectd.contract.verdict import iso_utc
from inspectd.ui.state import SILENT_INTERVALS, Line

BASE = "inspectd/v1/plant/l1/cam1"


def publish(line: Line, suffix: str, doc: dict[str, object]) -> None:
    line.on_message(f"{BASE}/{suffix}", json.dumps(doc).encode(), {})


def test_an_online_station_whose_health_is_overdue_is_flagged_until_health_comes_again() -> None:
    line = Line(("inspectd/v1/plant/l1/+",))
    publish(line, "status", {"state": "online"})
    publish(line, "health", {"state": "ok", "problems": [], "interval_s": 2.0})
    st = line.stations[BASE]
    assert st.health_at is not None
    due = st.health_at + SILENT_INTERVALS * 2.0

    assert line.check_silence(due - 0.1) == [] and not st.silent
    assert line.check_silence(due + 0.5) == [BASE]  # changed: the page gets the tile again
    assert line.check_silence(due + 1.0) == []  # still quiet, nothing new to send
    tile = st.summary(due + 1.0)
    assert tile["silent"] and tile["attention"]
    assert tile["problems"] == ["no health for 7 s (sent every 2.0 s): the station may be hung"]

    publish(line, "health", {"state": "ok", "problems": [], "interval_s": 2.0})
    assert not st.silent and st.summary()["problems"] == []
    assert line.check_silence(st.health_at + 1.0) == []


def test_a_wall_clock_step_does_not_flag_a_station_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    line = Line(("inspectd/v1/plant/l1/+",))
    publish(line, "status", {"state": "online"})
    publish(line, "health", {"state": "ok", "problems": [], "interval_s": 1.0})
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 3600.0)  # NTP, or an operator
    assert line.check_silence() == [] and not line.stations[BASE].silent


def test_no_silence_flag_for_an_offline_station_or_a_health_without_its_interval() -> None:
    line = Line(("inspectd/v1/plant/l1/+",))
    publish(line, "status", {"state": "offline"})  # its Last Will already says it
    publish(line, "health", {"state": "ok", "problems": [], "interval_s": 1.0})
    st = line.stations[BASE]
    assert st.health_at is not None
    assert line.check_silence(st.health_at + 100) == []
    assert st.summary()["problems"] == ["station offline"]

    publish(line, "status", {"state": "online"})
    publish(line, "health", {"state": "ok", "problems": []})  # an older station: no interval_s
    assert line.check_silence(st.health_at + 1000) == [] and not st.silent


def verdict(line: Line, seq: int, kind: str, t: float) -> None:
    publish(line, "verdict", {"seq": seq, "verdict": kind, "t_verdict": iso_utc(t)})


def stats(line: Line, ok: int, ng: int, error: int, since: float, through: int) -> None:
    hour = {"OK": ok, "NG": ng, "ERROR": error, "since": iso_utc(since), "through_seq": through}
    publish(line, "stats", {"last_hour": hour})


def test_counts_start_from_the_station_own_last_hour_and_add_only_what_it_did_not_count() -> None:
    line = Line(("inspectd/v1/plant/l1/+",))
    now = time.time()
    verdict(line, 101, "OK", now - 5)  # a page that started a minute ago saw only these
    verdict(line, 102, "NG", now - 4)
    st = line.stations[BASE]
    assert {k: st.counts(now)[k] for k in ("OK", "NG", "ERROR")} == {"OK": 1, "NG": 1, "ERROR": 0}

    stats(line, 900, 80, 20, since=now - 3000, through=102)  # 101 and 102 among them
    verdict(line, 103, "ERROR", now - 1)  # after the station's count
    verdict(line, 102, "NG", now - 4)  # a duplicate delivery
    c = st.counts(now)
    assert (c["OK"], c["NG"], c["ERROR"], c["total"]) == (900, 80, 21, 1001)
    assert c["reject_rate"] == 101 / 1001

    # the station restarted 3 s ago: it counts from there; what the page saw before stays
    stats(line, 0, 0, 1, since=now - 3, through=103)
    c = st.counts(now)
    assert (c["OK"], c["NG"], c["ERROR"]) == (1, 1, 1)


def test_a_station_without_last_hour_is_counted_from_what_the_page_received() -> None:
    line = Line(("inspectd/v1/plant/l1/+",))
    now = time.time()
    publish(line, "stats", {"verdicts": {"OK": 5000}})  # an older station's stats
    verdict(line, 7, "OK", now - 2)
    assert line.stations[BASE].counts(now)["total"] == 1


def test_the_histogram_axis_ends_at_twice_the_threshold_and_counts_the_scores_beyond() -> None:
    """A defect scoring 40x the threshold used to set the axis: the good parts and the threshold
    then shared the first bin or two, and drift was invisible."""
    line = Line(("inspectd/v1/plant/l1/+",))
    publish(line, "health", {"state": "ok", "problems": [], "thresholds": {"image": 0.15}})
    for seq, score in enumerate([0.05, 0.06, 0.07, 0.08, 0.09, 0.10], start=1):
        publish(line, "verdict", {"seq": seq, "verdict": "OK", "score": score})
    publish(line, "verdict", {"seq": 7, "verdict": "NG", "score": 6.0})
    hist = line.stations[BASE].histogram({"p50": 0.07, "p99": 0.1})
    assert hist["max"] == pytest.approx(0.3) and hist["over"] == 1
    assert sum(1 for n in hist["ok"] if n) == 6  # every good part in a bin of its own
    assert hist["ng"][-1] == 1 and hist["n_ok"] == 6
    # an accepted score above twice the threshold (thresholds lowered by hand) stays on the axis
    publish(line, "verdict", {"seq": 8, "verdict": "OK", "score": 0.5})
    assert line.stations[BASE].histogram({})["max"] == pytest.approx(0.5)


def test_parts_per_minute_is_the_recent_rate_and_none_for_a_station_that_is_not_running() -> None:
    """Before: the average since the first part of the hour, and "–" for the whole first
    minute, and a rate for a stopped station."""
    line = Line(("inspectd/v1/plant/l1/+",))
    publish(line, "status", {"state": "online"})
    now = time.time()
    verdict(line, 1, "OK", now - 3000)  # an hour's first part, long ago
    verdict(line, 2, "OK", now - 4)
    verdict(line, 3, "OK", now - 2)
    verdict(line, 4, "OK", now)
    st = line.stations[BASE]
    assert st.counts(now)["per_min"] == pytest.approx(30.0)  # 3 parts 2 s apart: 30 a minute
    publish(line, "status", {"state": "stopped"})
    assert st.counts(now)["per_min"] is None


def test_counts_by_shift_by_product_and_the_reject_alarm_with_a_clock_the_test_sets() -> None:
    from datetime import UTC, datetime
    from datetime import time as clock

    from inspectd.ui.tally import Counting

    counting = Counting([("early", clock(6)), ("late", clock(14)), ("night", clock(22))], UTC, 3)
    line = Line(("inspectd/v1/plant/l1/+",), counting=counting)
    publish(line, "status", {"state": "online"})
    day = datetime(2026, 12, 7, tzinfo=UTC).timestamp()
    at = lambda h, m=0: day + h * 3600 + m * 60  # noqa: E731

    def part(seq: int, kind: str, t: float, product: str = "button", **more: object) -> None:
        doc = {"seq": seq, "verdict": kind, "t_verdict": iso_utc(t), "product": product, **more}
        publish(line, "verdict", doc)

    part(1, "OK", at(1))  # night shift, begun yesterday 22:00
    part(2, "OK", at(13, 58))
    part(3, "NG", at(13, 59), regions=[{"area": 50}])
    part(4, "OK", at(14, 1))  # the late shift
    part(5, "ERROR", at(14, 2), error="camera: no frame within 5 s")
    st = line.stations[BASE]
    view = st.summary(at(14, 3))["tally"]
    assert view["shift"]["name"] == "late" and (view["shift"]["OK"], view["shift"]["ERROR"]) == (
        1,
        1,
    )
    assert view["previous_shift"]["name"] == "early" and view["previous_shift"]["NG"] == 1
    assert view["previous_shift"]["reasons"] == [{"reason": "NG: small (< 100 px) region", "n": 1}]
    assert view["shift"]["reasons"] == [{"reason": "ERROR: camera", "n": 1}]
    assert view["shift"]["yield"] == 0.5

    part(6, "NG", at(14, 4), product="button-b")  # a product change: its counts start at zero
    view = st.summary(at(14, 5))["tally"]
    assert view["product"]["name"] == "button-b" and view["product"]["total"] == 1
    assert view["previous_product"]["name"] == "button" and view["previous_product"]["total"] == 5
    assert not view["alarm"]  # 2 rejects in a row
    part(7, "NG", at(14, 6), product="button-b")
    tile = st.summary(at(14, 7))
    assert tile["alarm"] and tile["problems"][0].startswith("3 rejects in a row")
    part(8, "OK", at(14, 8), product="button-b")
    assert not st.summary(at(14, 9))["alarm"]
    # no part yet in the night shift: it counts from zero, the late one is the previous
    view = st.summary(at(22, 1))["tally"]
    assert view["shift"]["name"] == "night" and view["shift"]["total"] == 0
    assert view["previous_shift"]["name"] == "late" and view["previous_shift"]["total"] == 5
    # the trend: one entry a minute for the last hour, this minute last
    trend = st.summary(at(14, 8))["tally"]["trend"]
    assert len(trend) == 60 and trend[-1]["OK"] == 1 and trend[-3]["NG"] == 1


def test_where_on_the_part_rejects_lie_from_the_overlay_s_frame_size() -> None:
    import cv2
    import numpy as np

    from inspectd.ui.tally import jpeg_size, position_of

    ok, jpeg = cv2.imencode(".jpg", np.zeros((300, 600, 3), np.uint8))
    assert jpeg_size(jpeg.tobytes()) == (600, 300) and jpeg_size(b"not a jpeg") is None
    big = {"x": 500, "y": 10, "w": 40, "h": 20, "area": 800}
    small = {"x": 0, "y": 250, "w": 4, "h": 4, "area": 16}
    v = {"regions": [small, big]}
    assert position_of(v, (600, 300)) == (0, 2)  # the largest region: top right
    assert position_of(v, None) is None and position_of({"regions": []}, (600, 300)) is None


def test_a_reject_before_the_first_overlay_is_placed_once_the_frame_size_is_known() -> None:
    import cv2
    import numpy as np

    from inspectd.ui.tally import Counting

    line = Line(("inspectd/v1/plant/l1/+",), counting=Counting([("day", dt_time(0))]))
    region = {"x": 10, "y": 250, "w": 20, "h": 20, "area": 400}  # bottom left of 600 x 300
    publish(line, "verdict", {"seq": 1, "verdict": "NG", "regions": [region]})
    st = line.stations[BASE]
    assert st.summary()["tally"]["shift"]["positions"] == [[0, 0, 0]] * 3
    ok, jpeg = cv2.imencode(".jpg", np.zeros((300, 600, 3), np.uint8))
    line.on_message(f"{BASE}/overlay", jpeg.tobytes(), {"seq": "1"})
    assert st.summary()["tally"]["shift"]["positions"] == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
