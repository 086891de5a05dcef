"""Capture in a watched child process (IsolatedSource): real child processes, real signals.

Frames must come through the shared-memory ring exactly as the source made them; a child that
dies (SIGKILL) or stalls (SIGSTOP) is detected, killed and restarted, and meanwhile every part
gets an ERROR verdict (camera_offline), never silence and never a hang.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.capture import build_source, open_source
from inspectd.capture.isolated import IsolatedSource
from inspectd.config.camera import FolderCamera, OpenCVCamera

from support.daemon_process import Daemon
from support.inspections import write_button_parts
from support.paths import needs_bundle
from support.station import station_config, station_dict

FAST = {
    "enabled": True,
    "heartbeat_timeout_s": 1.0,
    "restart_backoff_s": 0.2,
    "restart_backoff_max_s": 1.0,
}


def write_folder(folder: Path, n: int = 6, shape: tuple[int, int] = (48, 64)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}_part.png"), rng.integers(0, 256, (*shape, 3), np.uint8))
    (folder / "zz_broken.png").write_bytes(b"not a png")


def wait_for(predicate, timeout: float, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_folder_frames_through_the_ring_equal_the_in_process_ones(tmp_path):
    write_folder(tmp_path / "f")
    cfg = FolderCamera(source="folder", path=tmp_path / "f", isolate=FAST)
    assert not FolderCamera(source="folder", path=tmp_path / "f").isolate.enabled  # default
    with build_source(cfg) as src:
        direct = list(src)
    isolated_src = open_source(cfg)
    assert isinstance(isolated_src, IsolatedSource)
    with isolated_src as src:
        isolated = list(src)
        assert src.state()["state"] == "online" and src.state()["dropped"] == 0
        pid = src.state()["child_pid"]
    assert not alive(pid)  # closed: the child is gone
    assert [f.part_id for f in isolated] == [f.part_id for f in direct]
    assert [f.frame_id for f in isolated] == [f.frame_id for f in direct]
    assert [f.error for f in isolated] == [f.error for f in direct]
    assert isolated[-1].image is None and "zz_broken" in isolated[-1].part_id
    for a, b in zip(isolated, direct, strict=True):
        if b.image is not None:
            assert a.image is not None and a.image.dtype == b.image.dtype
            np.testing.assert_array_equal(a.image, b.image)
        assert a.camera == b.camera and a.extra == b.extra


def test_a_bigger_frame_gets_a_bigger_ring(tmp_path):
    folder = tmp_path / "f"
    write_folder(folder, n=2, shape=(32, 32))
    cv2.imwrite(str(folder / "010_big.png"), np.full((300, 400, 3), 7, np.uint8))
    cfg = FolderCamera(source="folder", path=folder, isolate=FAST)
    with open_source(cfg) as src:
        # read late: the child reaches the big frame while the small ones are still unread in
        # the old ring; a replay must not lose them when the ring is replaced
        time.sleep(0.5)
        frames = list(src)
        assert src.state()["dropped"] == 0
    assert [f.image.shape for f in frames if f.image is not None] == [(32, 32, 3)] * 2 + [
        (300, 400, 3)
    ]
    assert int(frames[2].image.mean()) == 7


def test_an_opencv_video_works_isolated(tmp_path):
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(8):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    cfg = OpenCVCamera(source="opencv", device=str(video), isolate=FAST)
    assert OpenCVCamera(source="opencv", device=0).isolate.enabled  # on by default
    with build_source(cfg) as src:
        direct = list(src)
    with open_source(cfg) as src:
        assert isinstance(src, IsolatedSource)
        isolated = list(src)
    assert len(isolated) == len(direct) == 8
    for a, b in zip(isolated, direct, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.part_id == b.part_id


def test_a_camera_that_cannot_open_fails_open(tmp_path):
    cfg = FolderCamera(source="folder", path=tmp_path / "missing", isolate=True)
    from inspectd.capture import CaptureError

    with pytest.raises(CaptureError, match="image folder does not exist"):
        open_source(cfg).open()


def test_a_stalled_child_is_detected_by_the_heartbeat_killed_and_restarted(tmp_path):
    write_folder(tmp_path / "f")
    cfg = FolderCamera(source="folder", path=tmp_path / "f", loop=True, rate_hz=50, isolate=FAST)
    with open_source(cfg) as src:
        assert src.grab(2.0).image is not None
        old = src.state()["child_pid"]
        os.kill(old, signal.SIGSTOP)
        t0 = time.monotonic()
        wait_for(lambda: src.state()["state"] != "online", 3.0, step=0.005)
        detected = time.monotonic() - t0
        # heartbeat_timeout_s 1.0; the child beats at least every 0.5 s, the watchdog looks
        # every 50 ms
        assert 0.5 <= detected <= 1.0 + 0.3, detected
        assert "stalled" in src.state()["reason"]
        frame = src.grab(1.0)  # the first grab after it went offline: an ERROR at once
        assert frame.image is None and frame.error.startswith("camera_offline: no heartbeat")
        wait_for(lambda: not alive(old), 3.0)  # SIGKILLed although stopped
        state = wait_for(lambda: src.state()["state"] == "online" and src.state(), 10.0)
        assert state["child_pid"] != old and state["restarts"] == 1
        frames = [src.grab(2.0) for _ in range(3)]
        assert all(f.image is not None for f in frames)


def test_trigger_mode_answers_every_request_while_the_camera_is_offline(tmp_path):
    write_folder(tmp_path / "f")
    cfg = FolderCamera(
        source="folder",
        path=tmp_path / "f",
        loop=True,
        trigger="mqtt",
        isolate={**FAST, "restart_backoff_s": 1.0},
    )
    with open_source(cfg) as src:
        assert [src.grab(2.0).part_id for _ in range(2)] == ["000_part", "001_part"]
        old = src.state()["child_pid"]
        # a request in flight when the camera stalls is answered after the heartbeat timeout,
        # not after its own 20 s
        answer: list = []
        os.kill(old, signal.SIGSTOP)
        waiting = threading.Thread(target=lambda: answer.append(src.grab(20.0)))
        t0 = time.monotonic()
        waiting.start()
        waiting.join(5.0)
        assert answer and answer[0].error.startswith("camera_offline: no heartbeat")
        assert time.monotonic() - t0 < 2.0
        # while it is offline (1 s backoff), every request gets its answer at once
        for _ in range(5):
            t = time.monotonic()
            frame = src.grab(5.0)
            assert frame.image is None and frame.error.startswith("camera_offline")
            assert time.monotonic() - t < 0.2
        wait_for(lambda: src.state()["state"] == "online", 10.0)
        assert src.grab(2.0).part_id == "000_part"  # a new child: the folder starts over
        assert src.state()["child_pid"] != old


@needs_bundle
def test_a_killed_camera_process_in_a_station_gives_errors_health_and_a_restart(tmp_path):
    from inspectd.config import StationConfig
    from inspectd.service.station import Station

    frames = tmp_path / "frames"
    write_button_parts(frames, good=2, defect=1)
    camera = {"loop": True, "rate_hz": 20, "isolate": {**FAST, "restart_backoff_s": 0.5}}
    config = StationConfig.model_validate(station_dict(tmp_path, camera=camera))
    station = Station(config)
    station.start()
    stop = threading.Event()
    runner = threading.Thread(target=station.run, kwargs={"stop": stop})
    runner.start()
    jsonl = tmp_path / "out" / "verdicts.jsonl"

    def verdicts() -> list[dict]:
        text = jsonl.read_text() if jsonl.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    try:
        wait_for(lambda: len(verdicts()) >= 5, 30.0)
        assert station.health_snapshot()["camera"]["state"] == "ok"
        old = station.health_snapshot()["camera"]["process"]["child_pid"]
        os.kill(old, signal.SIGKILL)
        health = wait_for(
            lambda: (h := station.health_snapshot())["camera"]["state"] == "offline" and h, 3.0
        )
        assert [
            p
            for p in health["problems"]
            if p.startswith("camera_offline: the camera process was killed by SIGKILL")
        ]
        assert health["state"] == "degraded"
        wait_for(lambda: station.health_snapshot()["camera"]["state"] == "ok", 10.0)
        process = station.health_snapshot()["camera"]["process"]
        assert process["child_pid"] != old and process["restarts"] == 1
        n = len(verdicts())
        wait_for(lambda: len(verdicts()) >= n + 5, 15.0)  # verdicts resume
    finally:
        stop.set()
        runner.join(15.0)
        station.stop()
    assert not runner.is_alive()
    assert station.pipeline.stats.capture_failure is None  # a restart, not a fatal failure
    lines = verdicts()
    offline = [v for v in lines if (v.get("error") or "").startswith("camera_offline")]
    assert offline and all(v["verdict"] == "ERROR" for v in offline)
    last_offline = max(i for i, v in enumerate(lines) if v in offline)
    after = lines[last_offline + 1 :]  # inspected again (the button set has a wrong-size part)
    assert len(after) >= 5 and {v["verdict"] for v in after} >= {"OK", "NG"}
    assert all(v["error"] is None or "200x150" in v["error"] for v in after)


@needs_bundle
def test_the_daemon_runs_an_isolated_camera_without_torch(tmp_path):
    frames = tmp_path / "frames"
    write_button_parts(frames, good=2, defect=1)
    config = station_config(tmp_path, camera={"isolate": True})
    with Daemon(config) as daemon:
        rc = daemon.wait(60.0)
        assert rc == 0, daemon.tail()  # 99: torch was imported
        assert daemon.events("camera.online")[0]["isolated"] is True
    lines = (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()
    assert len(lines) == len(list(frames.iterdir()))
