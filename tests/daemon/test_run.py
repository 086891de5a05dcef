"""`inspectd run` end to end: the shipped button bundle, a folder camera, a real mosquitto.

The daemon runs as a child process, exactly as systemd starts it; what it publishes is read by a
real MQTT subscriber.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.bundle import load_bundle
from inspectd.synthetic import render_part

from support.daemon_process import Daemon
from support.mqtt_client import Subscriber
from support.paths import BUNDLE, LEAN_RUN, REPO, needs_bundle
from support.station import BASE, station_config, write_png

pytestmark = needs_bundle


def write_frames(folder: Path) -> dict[str, str]:
    """Good parts, one defect, and every kind of frame that cannot be inspected.
    Returns file stem -> expected error text (None for frames that get a score)."""
    folder.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    for i in range(3):
        write_png(folder / f"{i + 1:02d}_good.png", render_part(77, i, None)[0])
        expected[f"{i + 1:02d}_good"] = None
    write_png(folder / "04_defect.png", render_part(77, 3, "crack")[0])
    expected["04_defect"] = None
    whole = write_png(folder / "05_truncated.png", render_part(77, 4, None)[0])
    (folder / "05_truncated.png").write_bytes(whole[: len(whole) // 2])
    expected["05_truncated"] = "cannot decode image file 05_truncated.png"
    small = cv2.resize(render_part(77, 5, None)[0], (200, 150))
    write_png(folder / "06_wrong_size.png", small)
    expected["06_wrong_size"] = "frame is 200x150, the product expects"
    (folder / "07_empty.png").write_bytes(b"")
    expected["07_empty"] = "empty image file: 07_empty.png"
    deep = render_part(77, 6, None)[0].astype(np.uint16) * 257
    write_png(folder / "08_16bit.png", deep)
    expected["08_16bit"] = "unsupported pixel type uint16"
    rgba = cv2.cvtColor(render_part(77, 7, None)[0], cv2.COLOR_BGR2BGRA)
    write_png(folder / "09_rgba.png", rgba)
    expected["09_rgba"] = "unsupported channel count 4"
    return expected


def write_config(tmp: Path, port: int, frames: Path, **camera: object) -> Path:
    """The station on ``frames`` (read once unless ``camera`` says loop), overlay files for NG."""
    return station_config(
        tmp, port=port, camera={"path": frames, **camera}, output={"overlays": "ng"}
    )


def run_daemon(config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LEAN_RUN, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_every_frame_gets_one_verdict_in_order_and_bad_frames_are_errors(mosquitto, tmp_path):
    expected = write_frames(tmp_path / "frames")
    config = write_config(tmp_path, mosquitto.port, tmp_path / "frames")
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        proc = run_daemon(config)
        assert proc.returncode == 0, proc.stderr[-3000:]
        verdicts = [m.json() for m in sub.wait_for(9, topic=f"{BASE}/verdict")]
        statuses = [m.json()["state"] for m in sub.wait_for(2, topic=f"{BASE}/status")]

    assert [v["seq"] for v in verdicts] == list(range(1, 10))
    assert [v["part_id"] for v in verdicts] == sorted(expected)
    bundle = load_bundle(BUNDLE)
    for v in verdicts:
        reason = expected[v["part_id"]]
        assert v["schema"] == "inspectd.verdict/1" and v["station"] == "cam1"
        assert v["model"]["sha256"] == bundle.model_sha256
        if reason is None:
            assert v["verdict"] in ("OK", "NG") and v["error"] is None
            assert 0 <= v["score"] < 10 and v["threshold"] == bundle.thresholds.image
            assert (v["verdict"] == "NG") == (v["score"] >= v["threshold"])
        else:  # never OK, never silent: ERROR with the reason
            assert v["verdict"] == "ERROR" and v["score"] is None, v
            assert reason in v["error"], v
    by_part = {v["part_id"]: v for v in verdicts}
    assert by_part["04_defect"]["verdict"] == "NG" and by_part["04_defect"]["regions"]
    assert by_part["04_defect"]["score"] > max(by_part[f"0{i}_good"]["score"] for i in (1, 2, 3))

    # A PLC gateway hears about every NG and ERROR part on …/reject, and only those.
    rejected = [v["part_id"] for v in verdicts if v["verdict"] != "OK"]
    assert [m.json()["part_id"] for m in sub.messages(f"{BASE}/reject")] == rejected
    assert statuses[0] == "online" and statuses[-1] == "stopped"

    # The files agree with MQTT.
    lines = (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 10))
    overlays = sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir())
    assert len(overlays) == sum(v["verdict"] != "OK" for v in verdicts)  # NG and ERROR

    # seq survives a restart: the next run continues where this one ended.
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/verdict") as sub:
        assert run_daemon(config).returncode == 0
        again = [m.json()["seq"] for m in sub.wait_for(9)]
    assert again == list(range(10, 19))


def test_sigterm_drains_and_publishes_stopped(mosquitto, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        write_png(frames / f"{i}.png", render_part(5, i, None)[0])
    config = write_config(tmp_path, mosquitto.port, frames, loop=True, rate_hz=10)
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub, Daemon(config) as daemon:
        sub.wait_for(5, timeout=60, topic=f"{BASE}/verdict")
        assert daemon.terminate(timeout=30) == 0, daemon.tail()
        deadline = time.monotonic() + 5
        while sub.messages(f"{BASE}/status")[-1].json()["state"] != "stopped":
            assert time.monotonic() < deadline, "no 'stopped' status after SIGTERM"
            time.sleep(0.05)
        seqs = [m.json()["seq"] for m in sub.messages(f"{BASE}/verdict")]
    # every part the daemon took in before the signal got its verdict, none twice
    lines = (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()
    assert seqs == list(range(1, len(lines) + 1))
    assert daemon.events("station.stopped")


def test_config_and_bundle_errors_exit_2_with_the_reason(tmp_path):
    bad = tmp_path / "station.yaml"
    bad.write_text("station:\n  name: cam1\nproduct: button\ncamera:\n  source: genicm\n")
    for command in (["check-config", str(bad)], ["run", "--config", str(bad)]):
        proc = subprocess.run(
            [sys.executable, "-m", "inspectd", *command], capture_output=True, text=True
        )
        assert proc.returncode == 2
        assert f"{bad}:5:11 camera.source: 'genicm' is not one of folder, opencv" in proc.stderr

    # A valid config naming a product that is not there: exit 2 (systemd must not restart-loop).
    (tmp_path / "frames").mkdir()
    config = write_config(tmp_path, 1, tmp_path / "frames")
    text = config.read_text().replace('"product": "button"', '"product": "nosuch"')
    config.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "inspectd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "nosuch" in proc.stderr


def test_check_config_prints_the_resolved_config(tmp_path):
    (tmp_path / "frames").mkdir()
    config = write_config(tmp_path, 1883, Path("frames"))
    proc = subprocess.run(
        [sys.executable, "-m", "inspectd", "check-config", str(config)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"path: {tmp_path / 'frames'}" in proc.stdout  # relative to the config file
    assert "client_id: inspectd-cam1" in proc.stdout  # defaults filled in


def test_under_systemd_a_state_dir_outside_the_service_state_directory_is_refused(tmp_path):
    config = write_config(tmp_path, 1, tmp_path / "frames")  # state_dir: tmp/state
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "elsewhere")}
    proc = subprocess.run(
        [sys.executable, "-m", "inspectd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        f"state_dir: {tmp_path / 'state'} is not inside this service's state directory"
        in proc.stderr
    )
    assert not (tmp_path / "state").exists()  # refused before anything was written


def test_a_camera_that_is_not_there_is_a_failure_systemd_retries(tmp_path):
    config = write_config(tmp_path, 1, tmp_path / "not-yet-mounted")
    proc = subprocess.run(
        [sys.executable, "-m", "inspectd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not-yet-mounted" in proc.stderr


def test_a_done_dir_on_another_file_system_is_a_config_error_not_retried(tmp_path):
    # Files are moved by renaming, which cannot cross file systems: no restart fixes that.
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the tests' tmp folder")
    (tmp_path / "incoming").mkdir()
    done = other / f"inspectd-test-{os.getpid()}-done"
    config = write_config(
        tmp_path, 1, tmp_path / "incoming", watch={"enabled": True, "done_dir": done}
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "inspectd", "run", "--config", str(config)],
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(done, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{config}: camera.watch.done_dir: {done} is on another file system" in proc.stderr


def test_overlays_stats_and_health_over_mqtt(mosquitto, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        write_png(frames / f"{i:02d}_good.png", render_part(11, i, None)[0])
    write_png(frames / "03_defect.png", render_part(11, 3, "crack")[0])
    (frames / "04_empty.png").write_bytes(b"")
    config = write_config(tmp_path, mosquitto.port, frames, loop=True, rate_hz=20)
    settings = json.loads(config.read_text())
    settings["mqtt"].update(overlays="all", overlay_max_bytes=4096, stats_interval_s=0.5)
    config.write_text(json.dumps(settings))
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub, Daemon(config) as daemon:
        overlays = sub.wait_for(10, timeout=60, topic=f"{BASE}/overlay")
        stats = sub.wait_for(2, timeout=10, topic=f"{BASE}/stats")
        assert daemon.terminate(timeout=30) == 0, daemon.tail()
        verdicts = {m.json()["seq"]: m.json() for m in sub.messages(f"{BASE}/verdict")}
        health = sub.messages(f"{BASE}/health")

    # every part (overlays: all) gets a JPEG no bigger than the cap, with who it belongs to
    for msg in overlays:
        props = dict(msg.properties.UserProperty)
        verdict = verdicts[int(props["seq"])]
        assert props["part_id"] == verdict["part_id"] and props["verdict"] == verdict["verdict"]
        assert msg.properties.ContentType == "image/jpeg" and len(msg.payload) <= 4096
        image = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] < 256  # scaled down to fit the cap
    assert {dict(m.properties.UserProperty)["verdict"] for m in overlays} >= {"OK", "NG", "ERROR"}
    # stats are periodic, QoS 0, with the counts so far; health is retained and says ok
    last = stats[-1].json()
    assert sum(last["verdicts"].values()) >= 1 and last["outbox"]["durable"] is True
    assert health and health[0].json()["state"] == "ok" and health[0].json()["mqtt"]["connected"]
