"""The genicam source on the real GenTL simulator (TLSimu.cti, shipped by genicam==1.5.0):
acquisition, software trigger, device selection, node checks, `inspectd cameras`, and the
daemon from camera to verdicts, free-running and triggered over MQTT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspectd.capture import CaptureError, CaptureTimeout, build_source
from inspectd.capture.genicam import GenICamSource, list_cameras
from inspectd.config import load_station_config

from support.daemon_process import Daemon
from support.genicam import COLOR, CTI, MONO, genicam_station
from support.paths import REPO, needs_bundle
from support.requester import Requester, Station, stop_cleanly, wait_online
from support.station import BASE

pytestmark = pytest.mark.skipif(not CTI.is_file(), reason=f"no simulator at {CTI}")


def test_simulator_devices_are_listed():
    cams = list_cameras(CTI)
    assert len(cams) == 4
    serials = [d.serial for d, _ in cams]
    assert MONO in serials and COLOR in serials
    formats = {d.serial: fmt for d, fmt in cams}
    assert formats[MONO] == "Mono8" and formats[COLOR] == "RGB8"


def test_free_run_frames_with_increasing_ids():
    with GenICamSource(CTI, serial=MONO, roi=(256, 256, 0, 0)) as src:
        frames = [src.grab(timeout=2.0) for _ in range(10)]
    assert all(f.error is None for f in frames)
    assert all(f.image.shape == (256, 256) for f in frames)
    ids = [f.frame_id for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == 10
    meta = frames[0].camera
    assert meta.source == "genicam" and meta.serial == MONO and meta.pixel_format == "Mono8"
    assert meta.vendor == "EMVA_D" and meta.model == "TLSimuMono"
    assert list(frames[0].extra) == ["device_timestamp_ns"]  # the camera's own clock


def test_colour_device_gives_bgr():
    with GenICamSource(CTI, serial=COLOR) as src:
        frame = src.grab(timeout=2.0)
    assert frame.error is None and frame.image.ndim == 3 and frame.image.shape[2] == 3


def test_software_trigger_one_frame_per_grab_and_none_without():
    with GenICamSource(CTI, serial=COLOR, trigger_mode="software", roi=(256, 256, 0, 0)) as src:
        ids = [src.grab(timeout=2.0).frame_id for _ in range(3)]
        assert len(set(ids)) == 3
        # without a trigger, the camera sends nothing
        t0 = time.monotonic()
        with pytest.raises(type(_timeout_exc())):
            src._ia.fetch(timeout=0.3)
        assert time.monotonic() - t0 < 2.0
        assert src.grab(timeout=2.0).frame_id > ids[-1]  # and the next grab still gets one


def _timeout_exc():
    from genicam.gentl import TimeoutException

    return TimeoutException("x")


def test_no_trigger_no_frame_is_capture_timeout():
    # the camera armed for software triggers (an extra node setting) that nobody fires
    with GenICamSource(CTI, serial=MONO, nodes={"TriggerMode": "On"}, timeout_s=0.3) as src:
        t0 = time.monotonic()
        with pytest.raises(CaptureTimeout):
            src.grab(timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 2.0


def test_missing_serial_lists_the_devices():
    with pytest.raises(CaptureError) as err:
        GenICamSource(CTI, serial="NOPE").open()
    msg = str(err.value)
    assert "no GenICam camera with serial 'NOPE'" in msg
    assert MONO in msg and COLOR in msg and "TLSimuColor" in msg and "EMVA_D" in msg


def test_select_by_index():
    with GenICamSource(CTI, index=1) as src:
        assert src.camera.serial == COLOR


def test_ambiguous_user_id_is_an_error():
    with pytest.raises(CaptureError, match="4 GenICam cameras have user_id 'Center'"):
        GenICamSource(CTI, user_id="Center").open()


def test_unknown_node_is_an_error():
    with pytest.raises(CaptureError, match="no GenICam node 'PixelFormatt'.*similar: PixelFormat"):
        GenICamSource(CTI, serial=MONO, nodes={"PixelFormatt": "Mono8"}).open()


def test_read_only_node_is_an_error():
    with pytest.raises(CaptureError, match="'DeviceVendorName' is read-only"):
        GenICamSource(CTI, serial=MONO, nodes={"DeviceVendorName": "x"}).open()


def test_hardware_trigger_line_not_offered_is_an_error():
    with pytest.raises(CaptureError, match="'TriggerSource' cannot be 'Line1'; allowed: Software"):
        GenICamSource(CTI, serial=MONO, trigger_mode="hardware", trigger_line=1).open()


def test_no_producer_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    with pytest.raises(CaptureError, match="no GenTL producer"):
        GenICamSource().open()


def test_producer_from_environment(monkeypatch):
    monkeypatch.setenv("GENICAM_GENTL64_PATH", f"/nonexistent{os.pathsep}{CTI.parent}")
    with GenICamSource(serial=MONO) as src:
        assert src.grab(timeout=2.0).error is None


def test_config_and_open_source(tmp_path):
    cfg = _config(
        tmp_path,
        {"serial": MONO, "roi": {"width": 256, "height": 256}, "nodes": {"TriggerMode": "Off"}},
    )
    assert cfg.camera.trigger_mode == "free_run"
    src = build_source(cfg.camera)  # in process (open_source may wrap it in isolation)
    assert isinstance(src, GenICamSource) and src.roi == (256, 256, 0, 0)
    with src:
        assert src.grab(timeout=2.0).image.shape == (256, 256)


def test_config_mqtt_trigger_implies_software(tmp_path):
    cfg = _config(tmp_path, {"trigger": "mqtt"})
    assert cfg.camera.trigger_mode == "software"
    with pytest.raises(Exception, match="trigger_mode must be software"):
        _config(tmp_path, {"trigger": "mqtt", "trigger_mode": "free_run"})
    with pytest.raises(Exception, match="one of serial, user_id, index"):
        _config(tmp_path, {"serial": "a", "index": 1})


def test_the_commented_example_in_station_example_yaml_is_a_valid_genicam_section():
    # systemd/station.example.yaml shows the genicam keys commented out; they must stay right
    import yaml

    from inspectd.config.camera import GenICamCamera

    text = (REPO / "systemd" / "station.example.yaml").read_text()
    block = text[text.index("#camera:\n#  source: genicam") :].split("\n\n")[0]
    data = yaml.safe_load("\n".join(line[1:] for line in block.splitlines()))["camera"]
    assert list(data) == list(GenICamCamera.model_fields)  # every key, in schema order
    assert GenICamCamera.model_validate(data) == GenICamCamera(source="genicam")  # the defaults


def test_cameras_command():
    out = subprocess.run(
        [sys.executable, "-m", "inspectd", "cameras", "--cti", str(CTI)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "SERIAL" in lines[0] and "PIXEL FORMAT" in lines[0]
    assert len(lines) == 5 and any(MONO in line and "Mono8" in line for line in lines)


def test_cameras_command_without_producer(tmp_path):
    env = {**os.environ, "GENICAM_GENTL64_PATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "inspectd", "cameras"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2 and "no GenTL producer" in out.stderr


# -- through the daemon -------------------------------------------------------------------------


def _config(tmp: Path, camera: dict):
    path = tmp / "station.yaml"
    path.write_text(json.dumps(genicam_station(tmp, camera)))
    return load_station_config(path)


@needs_bundle
def test_daemon_free_run_to_verdicts(tmp_path):
    cfg = genicam_station(
        tmp_path,
        {"serial": MONO, "roi": {"width": 256, "height": 256}},
        mqtt={"enabled": False},
        output={"dir": str(tmp_path / "out")},
    )
    path = tmp_path / "station.yaml"
    path.write_text(json.dumps(cfg))
    jsonl = tmp_path / "out" / "verdicts.jsonl"
    with Daemon(path) as daemon:
        deadline = time.monotonic() + 60
        while not (jsonl.is_file() and len(jsonl.read_text().splitlines()) >= 5):
            assert daemon.running, daemon.tail()
            assert time.monotonic() < deadline, daemon.tail()
            time.sleep(0.1)
        assert daemon.terminate() == 0, daemon.tail()
    verdicts = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(verdicts) >= 5
    assert all(v["verdict"] in ("OK", "NG") and v["error"] is None for v in verdicts), verdicts[:2]


@needs_bundle
def test_daemon_software_trigger_over_mqtt(mosquitto, tmp_path):
    cfg = genicam_station(
        tmp_path,
        {"serial": COLOR, "roi": {"width": 256, "height": 256}, "trigger": "mqtt"},
        mqtt={"host": "127.0.0.1", "port": mosquitto.port, "drain_timeout_s": 2},
    )
    path = tmp_path / "station.yaml"
    path.write_text(json.dumps(cfg))
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"])
    with Daemon(path) as daemon, req:
        wait_online(req, timeout=60)
        st = Station(daemon, req, tmp_path)
        for i in range(3):
            answer = st.trigger(f"req-{i}", f"part-{i}")
            v = answer.json()["verdict"]
            assert v["verdict"] in ("OK", "NG") and v["error"] is None, v
            assert v["part_id"] == f"part-{i}"
        for i in range(3):
            st.wait_verdict(f"req-{i}")
        time.sleep(0.5)
        assert len(st.verdicts()) == 3  # one frame per trigger, none in between
        stop_cleanly(st)
