"""The UI's picture of a station from what it publishes: when a quiet station is flagged.
The page itself is tested in chromium (tests/daemon/test_ui.py)."""

from __future__ import annotations

import json

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
