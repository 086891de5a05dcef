"""The station's side of reviews (inspectd.reviews): where a review lands and what is refused.
The path through MQTT, the real daemon and the page is in test_ui.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.archived_parts import MAP_TOP, part_view
from inspectd.mqtt.commands import CommandError
from inspectd.outputs.archive import ARCHIVE_SCHEMA, scan
from inspectd.reviews import ReviewDesk, today_utc


def archived(root: Path, seq: int, part: str, verdict: str, frame: bool = True) -> Path:
    day = root / "2026-12-01"
    day.mkdir(parents=True, exist_ok=True)
    stem = f"{seq:010d}-{part}-{verdict}"
    doc = {
        "schema": ARCHIVE_SCHEMA,
        "verdict": {"seq": seq, "part_id": part, "verdict": verdict},
        "frame": f"{stem}.png" if frame else None,
        "map": None,
    }
    if frame:
        (day / f"{stem}.png").write_bytes(b"\x89PNG fake frame " + part.encode())
    (day / f"{stem}.json").write_text(json.dumps(doc))
    return day / stem


def test_a_false_reject_is_stored_beside_the_archive_with_the_frame_linked_once_per_part(
    tmp_path: Path,
) -> None:
    entry = archived(tmp_path, 7, "p7", "NG")
    desk = ReviewDesk(tmp_path)
    answer = desk.review({"seq": 7, "part_id": "p7", "label": "false_reject", "by": "alice"})
    stored = Path(answer["stored"])
    assert stored == tmp_path / "reviews" / "false_reject" / today_utc() / "0000000007-p7-NG.json"
    assert answer["frame"] is True
    assert answer["today"] == {"false_reject": 1, "true_defect": 0, "missed_defect": 0}
    doc = json.loads(stored.read_text())
    assert doc["review"]["by"] == "alice" and doc["verdict"]["seq"] == 7
    frame = stored.with_suffix(".png")
    assert frame.stat().st_ino == Path(f"{entry}.png").stat().st_ino  # a hard link, no copy
    # again: the review is replaced, the count stays
    again = desk.review(
        {"seq": 7, "part_id": "p7", "label": "false_reject", "note": "checked twice"}
    )
    assert again["today"]["false_reject"] == 1
    assert json.loads(stored.read_text())["review"]["note"] == "checked twice"
    # the archive itself does not see reviews/: its bound neither counts nor deletes them
    assert [e.stem for e in scan(tmp_path)] == ["0000000007-p7-NG"]
    assert desk.counts({})["today"]["false_reject"] == 1


def test_a_missed_defect_without_an_archived_frame_is_still_recorded(tmp_path: Path) -> None:
    answer = ReviewDesk(tmp_path).review({"seq": 9, "part_id": "p9", "label": "missed_defect"})
    assert answer["frame"] is False and answer["today"]["missed_defect"] == 1
    doc = json.loads(Path(answer["stored"]).read_text())
    assert doc["verdict"] == {"seq": 9, "part_id": "p9", "verdict": "OK"} and doc["frame"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"seq": 3, "part_id": "p3", "label": "false_reject"},
            "was OK: false_reject is for NG or ERROR",
        ),
        ({"seq": 4, "part_id": "p4", "label": "missed_defect"}, "was NG: missed_defect is for OK"),
        ({"seq": 5, "part_id": "p5", "label": "false_reject"}, "is not in the archive"),
        ({"seq": 4, "part_id": "other", "label": "false_reject"}, "is not in the archive"),
        ({"seq": "4", "part_id": "p4", "label": "false_reject"}, "seq: '4' is not"),
        (
            {"seq": 4, "part_id": "p4", "label": "good"},
            "label: 'good' is not one of false_reject, true_defect, missed_defect",
        ),
        (
            {"seq": 4, "part_id": "p4", "label": "false_reject", "x": 1},
            "unknown review fields ['x']",
        ),
        ({"seq": 4, "part_id": "p4", "label": "false_reject", "by": "<script>"}, "by: letters"),
    ],
)
def test_reviews_that_do_not_fit_the_part_are_refused(
    tmp_path: Path, args: dict, message: str
) -> None:
    archived(tmp_path, 3, "p3", "OK")
    archived(tmp_path, 4, "p4", "NG")
    with pytest.raises(CommandError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ReviewDesk(tmp_path).review(args)
    assert not (tmp_path / "reviews").exists() or not list((tmp_path / "reviews").rglob("*.json"))


def test_a_new_label_replaces_the_part_s_review_and_undo_removes_it_with_its_frame(
    tmp_path: Path,
) -> None:
    """One review per part: a reject first called good, then confirmed defective, must not stay
    among the good parts calibrate reads; Undo takes a review back, frame link included."""
    archived(tmp_path, 7, "p7", "NG")
    desk = ReviewDesk(tmp_path)
    first = Path(
        desk.review({"seq": 7, "part_id": "p7", "label": "false_reject", "by": "al"})["stored"]
    )
    assert first.with_suffix(".png").exists()
    answer = desk.review({"seq": 7, "part_id": "p7", "label": "true_defect", "by": "bo"})
    assert answer["today"] == {"false_reject": 0, "true_defect": 1, "missed_defect": 0}
    assert not first.exists() and not first.with_suffix(".png").exists()
    assert (tmp_path / "2026-12-01" / "0000000007-p7-NG.png").exists()  # the archive's own stays

    undone = desk.unreview({"seq": 7, "part_id": "p7", "by": "bo"})
    assert undone["removed"] == "true_defect"
    assert undone["today"] == {"false_reject": 0, "true_defect": 0, "missed_defect": 0}
    assert not list((tmp_path / "reviews").rglob("0000000007-*"))
    with pytest.raises(CommandError, match="has no review to undo"):
        desk.unreview({"seq": 7, "part_id": "p7"})
    with pytest.raises(CommandError, match="unknown unreview fields"):
        desk.unreview({"seq": 7, "part_id": "p7", "label": "false_reject"})


def test_a_station_without_an_archive_refuses_reviews() -> None:
    with pytest.raises(CommandError, match="keeps no archive"):
        ReviewDesk(None).review({"seq": 1, "part_id": "p", "label": "false_reject"})


def test_the_part_view_finds_an_archived_part_by_seq_or_id_with_its_map_against_its_threshold(
    tmp_path: Path,
) -> None:
    stem = archived(tmp_path, 8, "p8", "NG", frame=False)
    doc = json.loads(Path(f"{stem}.json").read_text())
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    Path(f"{stem}.png").write_bytes(png.tobytes())
    np.save(f"{stem}.map.npy", np.array([[0.0, 0.1], [0.2, 0.4]], np.float32))
    doc["verdict"]["threshold"] = 0.2
    doc.update(frame=Path(f"{stem}.png").name, map=Path(f"{stem}.map.npy").name)
    Path(f"{stem}.json").write_text(json.dumps(doc))

    by_id = part_view(tmp_path, {"part_id": "p8"})
    assert by_id == part_view(tmp_path, {"seq": 8})
    assert by_id["verdict"]["seq"] == 8 and by_id["frame"]["type"] == "image/png"
    level = cv2.imdecode(np.frombuffer(base64.b64decode(by_id["map"]["data"]), np.uint8), -1)
    # 255 is MAP_TOP x the part's threshold: the threshold itself sits at half the range
    assert by_id["map"]["top"] == pytest.approx(MAP_TOP * 0.2)
    assert level.tolist() == [[0, 64], [128, 255]]
    ReviewDesk(tmp_path).review({"seq": 8, "part_id": "p8", "label": "true_defect", "by": "al"})
    assert part_view(tmp_path, {"seq": 8})["review"]["label"] == "true_defect"
    with pytest.raises(CommandError, match="seq 9 is not in the archive"):
        part_view(tmp_path, {"seq": 9})
    with pytest.raises(CommandError, match="give seq, part_id or both"):
        part_view(tmp_path, {})
    with pytest.raises(CommandError, match="keeps no archive"):
        part_view(None, {"seq": 8})
