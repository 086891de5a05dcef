"""`inspectd replay`: archived parts through the current bundle, and what changed.

The archive is written by the real ArchiveSink (and, end to end, by a daemon process); replays
run the shipped bundle, or a copy of it re-sealed with other thresholds, on ONNX Runtime.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inspectd.bundle import load_bundle
from inspectd.bundle_seal import replace_thresholds
from inspectd.cli import main
from inspectd.outputs.archive import ArchiveSink, read_entry, scan
from inspectd.replay import replay

from support.inspections import button_parts, inspect, write_button_parts
from support.paths import BUNDLE, LEAN_RUN, PRODUCTS, REPO, needs_bundle
from support.station import station_config

pytestmark = needs_bundle


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """Every part archived (OK ones too): part_id -> its archived verdict payload."""
    root = tmp_path_factory.mktemp("station")
    sink = ArchiveSink(root / "archive", 10**9, ok_every=1)
    got, _ = inspect(button_parts(good=4, defect=4), [sink], root / "state")
    sink.close()
    assert sink.stats()["archived"] == len(got) == 10
    return root / "archive", {i.record.part_id: i.record.to_payload() for i in got}


def resealed(tmp_path: Path, image_threshold: float) -> Path:
    """The tests' button bundle copied and re-sealed with another image threshold (as calibrate
    does)."""
    products = tmp_path / "products"
    shutil.copytree(BUNDLE, products / "button")
    bundle = load_bundle(products / "button")
    replace_thresholds(bundle.path, bundle.thresholds.model_copy(update={"image": image_threshold}))
    assert load_bundle(products / "button").thresholds.image == image_threshold
    return products


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`inspectd ...` as a process; exit 99 if it imported torch."""
    return subprocess.run(
        [sys.executable, "-c", LEAN_RUN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_replay_with_the_same_bundle_reproduces_every_verdict_and_score(archive):
    folder, archived = archive
    report = replay(folder, PRODUCTS)
    by_part = {p.part_id: p for p in report.parts}
    assert set(by_part) == set(archived)
    for part_id, old in archived.items():
        p = by_part[part_id]
        if part_id == "late":  # an ERROR that never had a frame: nothing to run again
            assert p.status == "not_replayed" and "no frame" in str(p.note)
            continue
        assert p.status == "same", p
        assert (p.new_verdict, p.new_score) == (old["verdict"], old["score"])
        assert p.new_error == old["error"]
        if old["score"] is not None:
            assert p.map_diff is not None and p.map_diff <= 1e-6  # the map itself, too
    s = report.summary()
    assert (s["parts"], s["same"], s["changed"], s["score_moved"], s["not_replayed"]) == (
        10,
        9,
        0,
        0,
        1,
    )
    assert set(s["transitions"].values()) == {0}


def test_replay_after_new_thresholds_reports_exactly_the_parts_that_change(archive, tmp_path):
    folder, archived = archive
    scores = sorted(v["score"] for v in archived.values() if v["verdict"] == "NG")
    assert len(scores) >= 3
    higher = round((scores[0] + scores[1]) / 2, 6)  # the weakest NG part now passes
    products = resealed(tmp_path / "up", higher)

    proc = run_cli("replay", "--archive", str(folder), "--products-dir", str(products), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    expected = {
        p: ("NG" if v["score"] >= higher else "OK")
        for p, v in archived.items()
        if v["score"] is not None
    }
    changed = {
        p["part_id"]: (p["old_verdict"], p["new_verdict"])
        for p in out["parts"]
        if p["status"] == "changed"
    }
    assert changed == {
        p: (archived[p]["verdict"], new)
        for p, new in expected.items()
        if new != archived[p]["verdict"]
    }
    assert changed and set(changed.values()) == {("NG", "OK")}
    assert out["summary"]["transitions"]["NG->OK"] == len(changed)
    assert out["summary"]["same"] == 9 - len(changed)
    assert out["products"]["button"]["image_threshold"] == higher

    # Lower than the best good part: good parts would now be rejected, and the text says so.
    goods = sorted(v["score"] for v in archived.values() if v["verdict"] == "OK")
    lower = round((goods[-1] + goods[-2]) / 2, 6)
    products = resealed(tmp_path / "down", lower)
    proc = run_cli("replay", "--archive", str(folder), "--products-dir", str(products))
    assert proc.returncode == 0, proc.stderr[-3000:]
    good_best = max(
        (p for p, v in archived.items() if v["verdict"] == "OK"), key=lambda p: archived[p]["score"]
    )
    changed_lines = [line for line in proc.stdout.splitlines() if " -> " in line]
    assert len(changed_lines) == 1 and good_best in changed_lines[0]
    assert "OK " in changed_lines[0].split("->")[0] and "NG " in changed_lines[0].split("->")[1]
    assert "same 8  changed 1" in proc.stdout and "OK->NG 1" in proc.stdout


def test_a_bad_archive_or_bundle_exits_2_naming_the_path(archive, tmp_path, capsys):
    folder, _ = archive
    missing = tmp_path / "nope"
    proc = run_cli("replay", "--archive", str(missing), "--products-dir", str(PRODUCTS))
    assert proc.returncode == 2 and f"{missing}: does not exist" in proc.stderr

    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["--archive", str(tmp_path / "empty")], f"{tmp_path / 'empty'}: no archived parts"),
        (["--archive", str(tmp_path / "a-file")], f"{tmp_path / 'a-file'}: is not a folder"),
        (
            ["--archive", str(folder), "--product", "nosuch"],
            f"{PRODUCTS / 'nosuch'}: not a product bundle",
        ),
    ]
    for args, message in cases:
        assert main(["replay", "--products-dir", str(PRODUCTS), *args]) == 2
        assert message in capsys.readouterr().err

    # A bundle changed by hand is refused, not used.
    products = tmp_path / "products"
    shutil.copytree(BUNDLE, products / "button")
    thresholds = products / "button" / "thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("image:", "image: 0.5 #", 1))
    assert main(["replay", "--archive", str(folder), "--products-dir", str(products)]) == 2
    assert f"{thresholds}: sha256" in capsys.readouterr().err


def test_a_damaged_entry_is_reported_and_the_rest_replayed(archive, tmp_path):
    folder, archived = archive
    copy = tmp_path / "archive"
    shutil.copytree(folder, copy)
    entries = scan(copy)
    frame = entries[0].folder / read_entry(entries[0])["frame"]
    frame.write_bytes(frame.read_bytes()[:100])  # cut short
    entries[1].json_path.write_text("{")
    report = replay(copy, PRODUCTS)
    notes = [p.note for p in report.parts if p.status == "not_replayed"]
    assert len(notes) == 3  # the two damaged entries and the part that never had a frame
    assert any("archived frame unreadable" in n and "truncated" in n for n in notes)
    assert any(str(entries[1].json_path) in n for n in notes)
    assert report.summary()["same"] == 7


def test_a_daemon_archives_its_ng_and_error_parts_and_replay_finds_them_all_the_same(tmp_path):
    frames = tmp_path / "frames"
    write_button_parts(frames, good=2, defect=2)
    whole = (frames / "good0.png").read_bytes()
    (frames / "truncated.png").write_bytes(whole[: len(whole) // 2])  # ERROR, no frame
    config = station_config(tmp_path, archive={"enabled": True})  # dir: <state_dir>/archive
    proc = run_cli("run", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]

    verdicts = [
        json.loads(line) for line in (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()
    ]
    rejected = [v for v in verdicts if v["verdict"] != "OK"]
    assert sorted(v["part_id"] for v in rejected) == [
        "crack0",
        "missing_hole1",
        "small",
        "truncated",
    ]
    folder = tmp_path / "state" / "archive"
    archived = [read_entry(e)["verdict"] for e in scan(folder)]
    assert archived == sorted(rejected, key=lambda v: v["seq"])  # the very payloads, in seq order

    proc = run_cli("replay", "--archive", str(folder), "--products-dir", str(PRODUCTS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Summary: 4 parts  same 3  changed 0  score moved 0  not replayed 1" in proc.stdout
    assert "truncated" in proc.stdout and "cannot decode image file truncated.png" in proc.stdout
