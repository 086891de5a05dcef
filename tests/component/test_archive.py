"""The NG archive: what it keeps, the size bound, and that a failing disk never costs a verdict.

Parts are synthetic buttons inspected by the real pipeline with the shipped bundle; the archive
is the real sink writing to a real folder.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from structlog.testing import capture_logs

from inspectd.inspection import Inspection
from inspectd.outputs.archive import ArchiveSink, read_entry, scan

from support.inspections import NO_FRAME, button_parts, inspect, write_button_parts
from support.paths import needs_bundle
from support.station import station_dict

pytestmark = needs_bundle


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def suffixes(files: list[Path]) -> set[str]:
    return {f.name.split(".", 1)[1] for f in files}


@pytest.fixture(scope="module")
def ng(tmp_path_factory: pytest.TempPathFactory) -> Inspection:
    got, _ = inspect(button_parts(good=0, defect=1), [], tmp_path_factory.mktemp("state"))
    found = [i for i in got if i.record.verdict.value == "NG"]
    assert found, [(i.record.part_id, i.record.verdict) for i in got]
    return found[0]


def copies(inspection: Inspection, seqs: range) -> Iterator[Inspection]:
    """The same NG part as further parts of the line (seq and part_id of their own)."""
    for seq in seqs:
        record = dataclasses.replace(inspection.record, seq=seq, part_id=f"p{seq}")
        yield dataclasses.replace(inspection, record=record)


def test_ng_and_error_parts_are_archived_with_frame_map_and_verdict_ok_parts_are_not(tmp_path):
    parts = button_parts(good=4, defect=2)
    archive = ArchiveSink(tmp_path / "archive", 10**9)
    sample = ArchiveSink(tmp_path / "sample", 10**9, verdicts=("NG",), ok_every=2)
    got, _ = inspect(parts, [archive, sample], tmp_path / "state")
    archive.close()
    sample.close()
    by_part = {i.record.part_id: i for i in got}
    verdicts = {p: i.record.verdict.value for p, i in by_part.items()}
    assert verdicts == {
        "good0": "OK",
        "good1": "OK",
        "good2": "OK",
        "good3": "OK",
        "crack0": "NG",
        "missing_hole1": "NG",
        "small": "ERROR",
        "late": "ERROR",
    }

    entries = scan(tmp_path / "archive")
    docs = [read_entry(e) for e in entries]
    archived = [d["verdict"]["part_id"] for d in docs]
    assert archived == ["crack0", "missing_hole1", "small", "late"]  # oldest first, no OK part
    for entry, doc in zip(entries, docs, strict=True):
        inspection = by_part[doc["verdict"]["part_id"]]
        rec = inspection.record
        assert doc["verdict"] == rec.to_payload()
        assert entry.stem == f"{rec.seq:010d}-{rec.part_id}-{rec.verdict.value}"
        assert entry.folder.name == datetime.fromtimestamp(rec.t_capture, UTC).strftime("%Y-%m-%d")
        image = inspection.frame.image
        if rec.verdict.value == "NG":
            assert suffixes(entry.files) == {"png", "map.npy", "json"}
            stored_map = np.load(entry.folder / doc["map"])
            assert stored_map.dtype == np.float32 and stored_map.shape == (128, 128)
            assert np.array_equal(stored_map, inspection.anomaly_map)  # lossless
            assert doc["geometry"] == {"x0": 0, "y0": 0, "sx": 2.0, "sy": 2.0}
        elif image is not None:  # ERROR with a frame: the frame that could not be inspected
            assert suffixes(entry.files) == {"png", "json"}
            assert "frame is 200x150, the product expects" in doc["verdict"]["error"]
        else:  # ERROR without a frame: its verdict only
            assert suffixes(entry.files) == {"json"} and doc["frame"] is None
            assert doc["verdict"]["error"] == NO_FRAME
        if image is not None:  # the exact pixels the camera gave
            stored = cv2.imread(str(entry.folder / doc["frame"]), cv2.IMREAD_UNCHANGED)
            assert stored.shape == image.shape and np.array_equal(stored, image)
            assert doc["source"]["file"] == f"{rec.part_id}.png"
    stats = archive.stats()
    assert stats["archived"] == 4 and stats["entries"] == 4 and stats["errors"] == 0
    assert stats["bytes"] == disk_bytes(tmp_path / "archive")

    # NG only, and every second OK part as a sample of good ones
    sampled = [read_entry(e)["verdict"]["part_id"] for e in scan(tmp_path / "sample")]
    assert sampled == ["good1", "good3", "crack0", "missing_hole1"]


def test_the_bound_holds_oldest_go_first_and_a_restart_knows_the_size(ng, tmp_path):
    probe = ArchiveSink(tmp_path / "probe", 10**9)
    probe.handle(next(copies(ng, range(1, 2))))
    probe.close()
    one = probe.stats()["bytes"]
    assert one == disk_bytes(tmp_path / "probe") > 100_000  # frame, map and JSON

    folder, bound = tmp_path / "archive", int(5.5 * one)
    sink = ArchiveSink(folder, bound)
    with capture_logs() as logs:
        for inspection in copies(ng, range(1, 31)):
            sink.handle(inspection)
            sink.flush()
            assert disk_bytes(folder) <= bound
        sink.close()
    kept = [int(e.stem[:10]) for e in scan(folder)]
    assert kept == list(range(26, 31))  # the newest five; the oldest went first
    stats = sink.stats()
    assert (stats["archived"], stats["dropped"], stats["entries"]) == (30, 25, 5)
    assert stats["bytes"] == disk_bytes(folder)
    drops = [e for e in logs if e["event"] == "archive.dropped_oldest"]
    assert sum(e["entries"] for e in drops) == 25

    # A restart scans what is there: the bound counts the files an earlier run left, a crash's
    # half-written JSON is cleared away, and files that are not the archive's are left alone.
    day = scan(folder)[0].folder
    (day / "0000000099-x-NG.json.tmp").write_bytes(b"{")
    (folder / "NOTES.txt").write_text("the operator's own file")
    again = ArchiveSink(folder, bound)
    assert again.stats()["bytes"] == disk_bytes(folder) - len("the operator's own file")
    assert again.stats()["entries"] == 5 and again.stats()["dropped"] == 0
    assert not (day / "0000000099-x-NG.json.tmp").exists()
    again.handle(next(copies(ng, range(31, 32))))
    again.close()
    assert [int(e.stem[:10]) for e in scan(folder)] == list(range(27, 32))
    assert again.stats()["dropped"] == 1 and disk_bytes(folder) <= bound + len(
        "the operator's own file"
    )

    # A smaller bound at start is held at once.
    smaller = ArchiveSink(folder, int(2.5 * one))
    assert [int(e.stem[:10]) for e in scan(folder)] == [30, 31]
    assert smaller.stats()["dropped"] == 3 and (folder / "NOTES.txt").exists()
    smaller.close()


def test_a_write_error_is_counted_and_logged_and_every_verdict_still_goes_out(ng, tmp_path):
    folder = tmp_path / "archive"
    sink = ArchiveSink(folder, 10**9)
    shutil.rmtree(folder)
    folder.write_text("a file where the archive folder was")  # root ignores chmod; this it cannot
    parts = button_parts(good=2, defect=2)
    with capture_logs() as logs:
        got, stats = inspect(parts, [sink], tmp_path / "state")
        sink.flush()
    assert [i.record.seq for i in got] == list(range(1, len(parts) + 1))
    assert [i.record.verdict.value for i in got] == ["OK", "OK", "NG", "NG", "ERROR", "ERROR"]
    assert stats.sink_errors == 0  # the archive swallowed its failure; the pipeline never saw it
    s = sink.stats()
    assert (s["archived"], s["errors"], s["failing"]) == (0, 4, True)
    assert str(folder) in s["last_error"] and "NotADirectoryError" in s["last_error"]
    failed = [e for e in logs if e["event"] == "archive.write_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error"  # one line, then counted
    assert failed[0]["error"] == s["last_error"]

    folder.unlink()  # the disk is back
    with capture_logs() as logs:
        sink.handle(next(copies(ng, range(100, 101))))
        sink.close()
    assert sink.stats()["archived"] == 1 and sink.stats()["failing"] is False
    assert [e["failed_writes"] for e in logs if e["event"] == "archive.recovered"] == [4]


def test_a_station_with_an_unusable_archive_runs_and_says_so_in_health(tmp_path):
    from inspectd.config import StationConfig
    from inspectd.service.station import Station

    frames = tmp_path / "frames"
    write_button_parts(frames, good=1, defect=1)
    (frames / "zz_empty.png").write_bytes(b"")
    (tmp_path / "archive").write_text("not a folder")
    config = StationConfig.model_validate(
        station_dict(tmp_path, archive={"enabled": True, "dir": str(tmp_path / "archive")})
    )
    station = Station(config)
    station.start()
    try:
        station.run()
        assert station.archive is not None
        station.archive.flush()
        health, stats = station.health_snapshot(), station.stats_snapshot()
    finally:
        station.stop()
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()
    ]
    verdicts = {v["part_id"]: v["verdict"] for v in lines}
    assert verdicts == {"crack0": "NG", "good0": "OK", "small": "ERROR", "zz_empty": "ERROR"}
    # one error when the folder could not be opened at start, one per NG/ERROR part after
    assert stats["archive"]["errors"] == 1 + 3 and stats["archive"]["archived"] == 0
    assert health["state"] == "degraded"
    assert [p for p in health["problems"] if p.startswith("archive_failing: 4 errors")], health


def test_a_writer_that_falls_behind_skips_parts_and_never_holds_up_the_verdicts(ng, tmp_path):
    sink = ArchiveSink(tmp_path / "archive", 10**9, queue_depth=1)
    for inspection in copies(ng, range(1, 21)):  # back to back, far faster than PNGs are written
        sink.handle(inspection)
    sink.close()  # what was queued is still written
    s = sink.stats()
    assert s["skipped"] >= 1 and s["archived"] + s["skipped"] == 20 and s["errors"] == 0
    assert len(scan(tmp_path / "archive")) == s["archived"]
