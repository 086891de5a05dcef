"""The watched folder on its own: a real directory, a real outbox as its ledger, no daemon.

The daemon, the broker, restarts and kill -9 are in test_watched_daemon.py; here the burst of
1000 files (too slow through the model on 2 cores), the crash windows one by one, and the
config keys."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.capture import CaptureTimeout, WatchedFolderSource
from inspectd.capture.base import RECEIPT
from inspectd.capture.watched import ignored
from inspectd.config import ConfigError, load_station_config
from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.frame import Frame
from inspectd.outbox import Outbox


def png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def record(frame: Frame, verdict: Verdict, seq: int) -> VerdictRecord:
    return VerdictRecord(
        station="s",
        product="p",
        part_id=frame.part_id,
        verdict=verdict,
        score=None,
        threshold=None,
        model_name="m",
        model_sha256="0",
        model_version=1,
        camera_serial="",
        frame_id=frame.frame_id,
        t_capture=0.0,
        t_verdict=0.0,
        latency_ms=0.0,
        seq=seq,
    )


def drain(src: WatchedFolderSource, idle_s: float = 0.3) -> list[Frame]:
    """Every frame until none comes for ``idle_s``."""
    frames = []
    while True:
        try:
            frames.append(src.grab(timeout=idle_s))
        except CaptureTimeout:
            return frames


def commit(outbox: Outbox, frames: list[Frame], verdicts: list[Verdict]) -> list[int]:
    """What the pipeline does: the verdicts with their receipts, in one transaction."""
    return outbox.append_many(
        [(v, []) for v in verdicts], receipts=[f.extra[RECEIPT] for f in frames]
    )


# -- a burst --------------------------------------------------------------------------------


def test_a_burst_of_1000_files_comes_out_once_each_in_mtime_then_name_order(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    data = png(1)
    names = [f"f{i:04d}.png" for i in range(1000)]
    base = 1_700_000_000 * 10**9
    expected = []
    for i, name in enumerate(names):
        (incoming / name).write_bytes(data)
        # mtimes run backwards in blocks of 10, equal inside a block: the order is by mtime,
        # then name, and not the order the names sort or were written in
        mtime = base - (i // 10) * 10**9
        os.utime(incoming / name, ns=(mtime, mtime))
        expected.append((mtime, name))
    expected.sort()
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05)
    src.open()
    frames = drain(src)
    assert [f.extra["file"] for f in frames] == [n for _, n in expected]
    assert all(f.error is None and f.image is not None for f in frames)
    assert [f.frame_id for f in frames] == list(range(1, 1001))

    # recorded: OK and NG go to done/, none is handed out again
    src.recorded([(f, record(f, Verdict.OK, i + 1), True) for i, f in enumerate(frames)])
    assert sorted(os.listdir(incoming / "done")) == names
    assert [p.name for p in incoming.iterdir() if p.is_file()] == []
    assert drain(src, 0.3) == []


def test_files_written_during_the_burst_through_a_rename_are_each_read_once_and_whole(tmp_path):
    """A writer that writes `name.png.tmp` and renames it, 1000 times, while the station reads:
    with settle_s 0 nothing half-written is read and nothing is skipped."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    payloads = [png(i) for i in range(8)]
    names = [f"w{i:04d}.png" for i in range(1000)]

    def writer() -> None:
        for i, name in enumerate(names):
            tmp = incoming / f"{name}.tmp"
            data = payloads[i % 8]
            with open(tmp, "wb") as f:  # in two writes, so a reader could see half of it
                f.write(data[: len(data) // 2])
                f.flush()
                f.write(data[len(data) // 2 :])
            os.rename(tmp, incoming / name)

    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.01)
    src.open()
    thread = threading.Thread(target=writer)
    thread.start()
    frames: list[Frame] = []
    deadline = time.monotonic() + 60
    while len(frames) < len(names) and time.monotonic() < deadline:
        try:
            frame = src.grab(timeout=0.5)
        except CaptureTimeout:
            continue
        frames.append(frame)
        src.recorded([(frame, record(frame, Verdict.OK, len(frames)), True)])
    thread.join()
    frames += drain(src)
    got = [f.extra["file"] for f in frames]
    assert sorted(got) == names and len(set(got)) == len(got)  # each once, none skipped
    assert all(f.error is None for f in frames), [f.error for f in frames if f.error][:3]
    assert sorted(os.listdir(incoming / "done")) == names


def test_a_file_is_not_read_before_its_size_and_mtime_settled(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    data = png(3)
    part = incoming / "slow.png"
    part.write_bytes(data[:20])  # the writer is still at it
    src = WatchedFolderSource(incoming, settle_s=3.0, poll_s=0.05)
    src.open()
    with pytest.raises(CaptureTimeout):
        src.grab(timeout=0.5)  # under 3 s since it was first seen: not settled
    part.write_bytes(data)  # done: a new size (and mtime), so it settles from now on
    t0 = time.monotonic()
    frame = src.grab(timeout=30.0)
    assert time.monotonic() - t0 >= 3.0  # from the change on, not from the first sighting
    assert frame.error is None and frame.image is not None and frame.image.shape == (8, 8, 3)


def test_ignored_names():
    for name in [
        ".a.png",
        "a.png.tmp",
        "a.png.part",
        "a.PNG.TMP",
        "a.png~",
        "a.png.partial",
        "a.png.filepart",
        "a.png.crdownload",
    ]:
        assert ignored(name), name
    assert not ignored("a.png") and not ignored("tmp.png")


def test_an_undecodable_file_is_an_error_frame_moved_to_failed_and_not_read_again(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    (incoming / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (incoming / "good.png").write_bytes(png(4))
    os.utime(incoming / "bad.png", ns=(10**18, 10**18))  # the older one first
    os.utime(incoming / "good.png", ns=(2 * 10**18, 2 * 10**18))
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05)
    src.open()
    bad, good = drain(src)
    assert bad.image is None and "cannot decode image file bad.png" in (bad.error or "")
    assert good.error is None
    src.recorded(
        [(bad, record(bad, Verdict.ERROR, 1), True), (good, record(good, Verdict.OK, 2), True)]
    )
    assert os.listdir(incoming / "failed") == ["bad.png"]
    assert os.listdir(incoming / "done") == ["good.png"]
    assert drain(src) == []


# -- crash windows, with the outbox as the ledger ------------------------------------------


def test_after_a_crash_between_commit_and_move_the_file_is_moved_and_not_inspected_again(tmp_path):
    incoming, state = tmp_path / "in", tmp_path / "state"
    incoming.mkdir()
    for i in range(3):
        (incoming / f"p{i}.png").write_bytes(png(i))
        os.utime(incoming / f"p{i}.png", ns=(10**18 + i, 10**18 + i))
    outbox = Outbox(state / "outbox.db")
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05, ledger=outbox)
    src.open()
    p0, p1, p2 = drain(src)
    # p0 and p1 committed (p1 an ERROR), then the process dies before moving anything;
    # p2 was grabbed but its verdict never committed
    assert commit(outbox, [p0, p1], [Verdict.OK, Verdict.ERROR]) == [1, 2]
    outbox.close()  # the file is what a kill -9 leaves: the commit is all there is

    outbox = Outbox(state / "outbox.db")
    assert [(k, s, v) for k, s, v in outbox.receipts()] == [
        (p0.extra[RECEIPT], 1, Verdict.OK),
        (p1.extra[RECEIPT], 2, Verdict.ERROR),
    ]
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05, ledger=outbox)
    src.open()
    assert os.listdir(incoming / "done") == ["p0.png"]
    assert os.listdir(incoming / "failed") == ["p1.png"]
    assert src.counts["resumed"] == 2
    assert outbox.receipts() == []  # moved: forgotten
    (again,) = drain(src)  # only the one without a committed verdict
    assert again.extra["file"] == "p2.png"
    commit(outbox, [again], [Verdict.NG])
    src.recorded([(again, record(again, Verdict.NG, 3), True)])
    assert sorted(os.listdir(incoming / "done")) == ["p0.png", "p2.png"]
    assert outbox.receipts() == []
    outbox.close()


def test_a_receipt_left_after_the_move_does_not_swallow_a_new_file_under_that_name(tmp_path):
    incoming, state = tmp_path / "in", tmp_path / "state"
    incoming.mkdir()
    (incoming / "cam.png").write_bytes(png(1))
    outbox = Outbox(state / "outbox.db")
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05, ledger=outbox)
    src.open()
    (first,) = drain(src)
    commit(outbox, [first], [Verdict.OK])
    # moved, then killed before the receipt was forgotten: simulate by moving by hand
    os.replace(incoming / "cam.png", incoming / "done" / "cam.png")
    outbox.close()
    # the camera reuses the name for the next part while the station is down
    (incoming / "cam.png").write_bytes(png(2) + b"")
    os.utime(incoming / "cam.png", ns=(5 * 10**18, 5 * 10**18))

    outbox = Outbox(state / "outbox.db")
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05, ledger=outbox)
    src.open()
    assert outbox.receipts() == [] and src.counts["resumed"] == 0
    (second,) = drain(src)
    assert second.extra["file"] == "cam.png" and second.extra[RECEIPT] != first.extra[RECEIPT]
    commit(outbox, [second], [Verdict.OK])
    src.recorded([(second, record(second, Verdict.OK, 2), True)])
    # the earlier cam.png in done/ is kept; the new one gets the seq in its name
    assert sorted(os.listdir(incoming / "done")) == ["cam.png", "cam~2.png"]
    outbox.close()


def test_a_verdict_not_on_disk_leaves_the_file_for_the_next_run(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    (incoming / "a.png").write_bytes(png(1))
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05)
    src.open()
    (frame,) = drain(src)
    src.recorded([(frame, record(frame, Verdict.OK, 1), False)])
    assert (incoming / "a.png").exists() and os.listdir(incoming / "done") == []
    assert drain(src) == []  # not inspected again by this process
    src2 = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05)
    src2.open()
    assert [f.extra["file"] for f in drain(src2)] == ["a.png"]  # the next run does


def test_an_unmovable_file_is_not_inspected_again_and_its_receipt_is_kept(tmp_path):
    incoming, state = tmp_path / "in", tmp_path / "state"
    incoming.mkdir()
    (incoming / "a.png").write_bytes(png(1))
    outbox = Outbox(state / "outbox.db")
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05, ledger=outbox)
    src.open()
    (frame,) = drain(src)
    commit(outbox, [frame], [Verdict.OK])
    (incoming / "done").rmdir()
    (incoming / "done").write_text("not a folder")  # the rename fails
    src.recorded([(frame, record(frame, Verdict.OK, 1), True)])
    assert (incoming / "a.png").exists() and src.counts["move_failed"] == 1
    assert drain(src) == []
    assert [k for k, _, _ in outbox.receipts()] == [frame.extra[RECEIPT]]
    outbox.close()


# -- config -----------------------------------------------------------------------------------


def config(tmp_path: Path, camera: str) -> Path:
    path = tmp_path / "station.yaml"
    path.write_text(
        "station:\n  name: s1\nproduct: button\ncamera:\n  source: folder\n"
        "  path: /data/in\n" + camera
    )
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_station_config(path)
    return [e.removeprefix(str(path)) for e in info.value.errors]


def test_watch_config_defaults_and_shorthand(tmp_path):
    cfg = load_station_config(config(tmp_path, "  watch: true\n"))
    w = cfg.camera.watch
    assert (w.enabled, w.settle_s, w.poll_s) == (True, 1.0, 0.5)
    assert (w.done_dir, w.failed_dir) == (Path("/data/in/done"), Path("/data/in/failed"))
    cfg = load_station_config(
        config(tmp_path, "  watch:\n    enabled: true\n    settle_s: 0\n    done_dir: ok\n")
    )
    assert cfg.camera.watch.settle_s == 0 and cfg.camera.watch.done_dir == tmp_path / "ok"
    assert not load_station_config(config(tmp_path, "")).camera.watch.enabled


def test_watch_config_errors_name_line_key_and_what_is_allowed(tmp_path):
    assert errors(config(tmp_path, "  watch:\n    enabled: true\n    settle: 2\n")) == [
        ":9:5 camera.watch.settle: unknown key 'settle' (allowed: done_dir, enabled, "
        "failed_dir, poll_s, settle_s); did you mean 'settle_s'?"
    ]
    assert errors(config(tmp_path, "  watch:\n    poll_s: 0\n    settle_s: -1\n")) == [
        ":8:13 camera.watch.poll_s: 0 is out of range: must be > 0",
        ":9:15 camera.watch.settle_s: -1 is out of range: must be >= 0",
    ]
    assert errors(config(tmp_path, "  loop: true\n  watch: true\n")) == [
        ":5:3 camera: loop and watch exclude each other: loop reads every file again on every "
        "pass, watch reads each new file once"
    ]
    (iso,) = errors(config(tmp_path, "  isolate: true\n  watch: true\n"))
    assert iso.startswith(":5:3 camera: a watched folder runs in the daemon's process")
    assert errors(config(tmp_path, "  watch:\n    enabled: true\n    done_dir: /data/in\n")) == [
        ":5:3 camera: watch.done_dir must not be the watched folder itself"
    ]


def test_a_file_name_that_is_not_utf8_keeps_its_exact_bytes_through_the_receipt(tmp_path):
    incoming, state = tmp_path / "in", tmp_path / "state"
    incoming.mkdir()
    raw = os.fsencode(incoming) + b"/caf\xe9.png"  # Latin-1, as an old Windows PC writes it
    with open(raw, "wb") as f:
        f.write(png(1))
    outbox = Outbox(state / "outbox.db")
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05, ledger=outbox)
    src.open()
    (frame,) = drain(src)
    assert frame.part_id == "caf\\xe9" and frame.error is None  # escaped, printable
    commit(outbox, [frame], [Verdict.NG])
    outbox.close()  # killed before the move
    outbox = Outbox(state / "outbox.db")
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05, ledger=outbox)
    src.open()
    assert src.counts["resumed"] == 1 and drain(src) == []
    assert os.listdir(os.fsencode(incoming / "done")) == [b"caf\xe9.png"]
    assert outbox.receipts() == []
    outbox.close()


def test_failing_moves_are_a_health_problem_until_a_move_works(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    (incoming / "a.png").write_bytes(png(1))
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05)
    src.open()
    (frame,) = drain(src)
    (incoming / "done").rmdir()
    (incoming / "done").write_text("not a folder")  # the rename fails
    src.recorded([(frame, record(frame, Verdict.OK, 1), True)])
    (problem,) = src.problems()
    assert problem.startswith("camera_move_failed: 1 files not moved since start, last: a.png to ")
    assert src.stats() == {
        "watch": {"inspected": 1, "moved": 0, "move_failed": 1, "resumed": 0, "changed": 0}
    }
    (incoming / "done").unlink()
    (incoming / "done").mkdir()
    (incoming / "b.png").write_bytes(png(2))
    (frame,) = drain(src)
    src.recorded([(frame, record(frame, Verdict.OK, 2), True)])
    assert src.problems() == [] and src.stats()["watch"]["moved"] == 1


def test_a_folder_that_cannot_be_listed_is_a_health_problem_until_it_can(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    src = WatchedFolderSource(incoming, settle_s=0.0, poll_s=0.05)
    src.open()
    assert drain(src, idle_s=0.1) == [] and src.problems() == []
    moved = tmp_path / "share-gone"
    incoming.rename(moved)  # the share disappears under the daemon
    assert drain(src, idle_s=0.2) == []
    (problem,) = src.problems()
    assert problem.startswith(f"camera_listing_failed: {incoming}: ")
    moved.rename(incoming)
    (incoming / "a.png").write_bytes(png(1))
    (frame,) = drain(src)
    assert frame.error is None and src.problems() == []
