"""The station's health combined from its components' stats() and problems().

StationHealth gets stand-ins for the components (anything with stats() and problems() will do:
inspectd.reporting.Reporting). The station's start and stop:
tests/component/test_station_lifecycle.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inspectd.capture.watched import WatchedFolderSource
from inspectd.config import StationConfig
from inspectd.inspection import PipelineStats
from inspectd.service.health import StationHealth

from support.contract import TABLE, check_keys
from support.station import station_dict


class Part:
    """A component that reports what it is told to."""

    def __init__(self, stats: dict[str, Any], problems: list[str] | None = None) -> None:
        self._stats, self._problems = stats, problems or []

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def problems(self) -> list[str]:
        return list(self._problems)


def config(tmp_path: Path, **camera: Any) -> StationConfig:
    return StationConfig.model_validate(station_dict(tmp_path, camera=camera))


def stand_in_pipeline(
    capture_failure: str | None = None,
    stalled: dict[str, float] | None = None,
    short: str | None = None,
) -> Any:
    thresholds = SimpleNamespace(
        image=0.2, pixel=0.3, facts=lambda: {"parts": 10}, short_of_target=lambda: short
    )
    return SimpleNamespace(
        bundle=SimpleNamespace(name="button", version=1, model_sha256="ab" * 32),
        engine=SimpleNamespace(name="onnxruntime-cpu"),
        thresholds=thresholds,
        stats=PipelineStats(capture_failure=capture_failure),
        stalled=lambda stall_s: dict(stalled or {}),
    )


def health(
    tmp_path: Path,
    pipeline: Any = None,
    source: Any = None,
    **parts: Any,
) -> StationHealth:
    """A station's health with ``parts`` registered by name, in reverse of the documented order
    (the order problems come in is health's, by name, not the registration's)."""
    report = StationHealth(
        config(tmp_path),
        boot_id="b" * 32,
        pipeline=pipeline or stand_in_pipeline(),
        source=source or Part({}),
        publisher=None,
    )
    for name, part in reversed({"outbox": Part({"depth": 0}), **parts}.items()):
        report.register(name, part)
    return report


def test_a_well_station_is_ok_with_the_documented_keys(tmp_path: Path) -> None:
    snapshot = health(tmp_path).snapshot()
    assert snapshot["state"] == "ok" and snapshot["problems"] == []
    row = TABLE["health"]
    assert row.keys is not None
    check_keys(snapshot, row.keys, row.open, "health")
    assert snapshot["camera"] == {
        "source": "folder",
        "state": "ok",
        "trigger": "free_run",
        "fps": 0.0,
        "process": None,
    }
    assert snapshot["drift"] == {"state": "off"} and snapshot["metrics"] is None


def test_problems_come_from_the_components_in_a_fixed_order(tmp_path: Path) -> None:
    snapshot = health(
        tmp_path,
        outbox=Part({"depth": 3}, ["outbox_not_durable: disk full"]),
        source=Part(
            {"state": "offline", "process": {"state": "offline"}}, ["camera_offline: gone"]
        ),
        pipeline=stand_in_pipeline(stalled={"publish": 12.0}),
        archive=Part({}, ["archive_failing: 1 errors since start, last: x"]),
        drift=Part({"state": "drift"}, ["drift: 90% of the last 100 OK parts ..."]),
    ).snapshot()
    assert snapshot["state"] == "degraded"
    assert [p.split(":")[0] for p in snapshot["problems"]] == [
        "outbox_not_durable",
        "camera_offline",
        "stalled",
        "archive_failing",
        "drift",
    ]
    assert snapshot["problems"][2] == "stalled: publish thread, no progress for 12 s"
    # a source's stats join the camera section; its "state" replaces "ok"
    assert snapshot["camera"]["state"] == "offline"
    assert snapshot["camera"]["process"] == {"state": "offline"}
    assert snapshot["outbox"] == {"depth": 3} and snapshot["drift"] == {"state": "drift"}


def test_thresholds_from_too_few_parts_for_their_target_are_a_problem(tmp_path: Path) -> None:
    """A reload refuses them (issue 35); loaded at start they run, but health says so, and the
    page shows it on the tile."""
    why = "calibrated from 1 good part, fewer than the 2995 a false-reject rate of 0.001 needs"
    snapshot = health(tmp_path, pipeline=stand_in_pipeline(short=why)).snapshot()
    assert snapshot["state"] == "degraded" and snapshot["problems"] == [f"thresholds: {why}"]


def test_healthz_is_told_of_verdicts_that_got_no_seq_once(tmp_path: Path) -> None:
    outbox = Part({}, ["outbox_not_durable: x", "seq_unavailable: 3 verdicts since t got no seq"])
    station = health(tmp_path, outbox=outbox)
    assert station.held_back() == ["seq_unavailable: 3 verdicts since t got no seq"]
    assert [p.split(":")[0] for p in station.snapshot()["problems"]] == [
        "outbox_not_durable",
        "seq_unavailable",
    ]


def test_a_camera_that_failed_says_only_that(tmp_path: Path) -> None:
    snapshot = health(
        tmp_path,
        source=Part({"state": "offline"}, ["camera_offline: gone"]),
        pipeline=stand_in_pipeline(capture_failure="device lost"),
    ).snapshot()
    assert snapshot["camera"]["state"] == "failed"
    assert snapshot["problems"] == ["camera_failed: device lost"]


def test_the_watched_folder_reports_its_counters_under_camera(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    source = WatchedFolderSource(folder, settle_s=0.0, poll_s=0.05)
    snapshot = health(tmp_path, source=source).snapshot()
    assert snapshot["camera"]["watch"] == {
        "inspected": 0,
        "moved": 0,
        "move_failed": 0,
        "resumed": 0,
        "changed": 0,
    }
    assert snapshot["camera"]["process"] is None and snapshot["problems"] == []


def test_components_report_once_by_name_and_stats_are_theirs(tmp_path: Path) -> None:
    archive = Part({"written": 4}, ["archive_failing: disk"])
    report = health(tmp_path, archive=archive, commands=Part({"errors": {}}))
    with pytest.raises(ValueError, match="already reports as 'archive'"):
        report.register("archive", Part({}))
    stats = report.stats()
    assert stats["archive"] == {"written": 4} and stats["commands"] == {"errors": {}}
    assert stats["triggers"] is None and stats["mqtt"] is None  # not registered: off
    assert report.snapshot()["problems"] == ["archive_failing: disk"]
