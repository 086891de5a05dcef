"""The isolated genicam camera inside the real daemon process (`inspectd run`), seen from MQTT.

The camera is TLSimu (genicam==1.5.0's GenTL simulator) in the daemon's watched child process,
the broker a private mosquitto. The child is killed with SIGKILL the way a crashing driver dies;
everything is asserted on what a PLC gateway or MES receives: verdicts, rejects, health and
answers to trigger requests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support.daemon_process import Daemon
from support.genicam import COLOR, MONO, genicam_station
from support.paths import REPO, needs_bundle
from support.products import copy_bundle
from support.requester import Requester, Station, stop_cleanly, wait_online
from support.station import BASE, HEALTH, REJECT, VERDICT

pytestmark = needs_bundle

ROI = {"width": 256, "height": 256}
KILLED = "camera_offline: the camera process was killed by SIGKILL"


def camera_children(pid: int) -> list[int]:
    """The multiprocessing "spawn" children of ``pid`` (not its resource tracker), from /proc:
    the process tree itself, not what the daemon says about it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def the_camera_child(daemon: Daemon, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while len(pids := camera_children(daemon.proc.pid)) != 1:
        assert time.monotonic() < deadline, f"camera children {pids}\n{daemon.tail()}"
        time.sleep(0.05)
    return pids[0]


def write_config(tmp: Path, camera: dict[str, Any], port: int, **extra: Any) -> Path:
    cfg = genicam_station(
        tmp,
        {"roi": ROI, **camera},
        mqtt={"host": "127.0.0.1", "port": port, "drain_timeout_s": 2},
        **extra,
    )
    path = tmp / "station.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_a_killed_camera_process_gives_error_verdicts_offline_health_and_a_restart(
    mosquitto, tmp_path
):
    # Backoff 2 s: the offline spell outlasts a health tick (1 s), so health must show it.
    isolate = {"heartbeat_timeout_s": 1.0, "restart_backoff_s": 2.0, "restart_backoff_max_s": 2.0}
    path = write_config(tmp_path, {"serial": MONO, "isolate": isolate}, mosquitto.port)
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#"])
    with Daemon(path) as daemon, req:
        wait_online(req, timeout=60)
        req.wait(VERDICT, n=3, timeout=30)  # free run: inspecting
        old = the_camera_child(daemon)
        healthy = req.wait(lambda m: m.topic == HEALTH and m.json()["camera"]["state"] == "ok")
        assert healthy[-1].json()["camera"]["process"]["child_pid"] == old  # health names it

        os.kill(old, signal.SIGKILL)

        def health(m) -> bool:
            return m.topic == HEALTH and m.json()["camera"]["state"] == "offline"

        offline = req.wait(health, timeout=5)[0].json()
        assert offline["state"] == "degraded" and KILLED in offline["problems"]
        assert offline["camera"]["process"]["child_pid"] is None  # nothing running meanwhile

        # the part that was being grabbed gets an ERROR verdict and a reject, not silence
        errors = req.wait(
            lambda m: m.topic == VERDICT and m.json()["verdict"] == "ERROR", timeout=5
        )
        first = errors[0].json()
        assert first["error"] == KILLED, first
        rejects = req.wait(
            lambda m: m.topic == REJECT and m.json()["seq"] == first["seq"], timeout=5
        )
        assert rejects[0].json()["verdict"] == "ERROR"

        # a new child (seen in /proc, and in health) and healthy again
        back = req.wait(
            lambda m: (
                m.topic == HEALTH
                and m.json()["camera"]["state"] == "ok"
                and m.json()["camera"]["process"]["restarts"] == 1
            ),
            timeout=20,
        )
        new = the_camera_child(daemon)
        assert new != old and back[-1].json()["camera"]["process"]["child_pid"] == new
        assert back[-1].json()["state"] == "ok"

        # verdicts resume: inspected parts after the last ERROR
        def resumed(m) -> bool:
            if m.topic != VERDICT:
                return False
            v = m.json()
            return v["seq"] > first["seq"] and v["verdict"] in ("OK", "NG") and v["error"] is None

        req.wait(resumed, n=3, timeout=20)
        assert [e["reason"] for e in daemon.events("camera.offline")] == [KILLED.split(": ", 1)[1]]
        assert daemon.events("camera.restarted")[0]["pid"] == new
        verdicts = [m.json() for m in req.messages(VERDICT)]
        offline_errors = [v for v in verdicts if v["verdict"] == "ERROR"]
        # free run while offline: one ERROR at once, then at most one per 1 s grab timeout
        assert all(v["error"].startswith("camera_offline") for v in offline_errors)
        assert 1 <= len(offline_errors) <= 6, offline_errors
        assert daemon.terminate() == 0, daemon.tail()
    assert not camera_children(daemon.proc.pid) and not _alive(new)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_trigger_taken_before_the_camera_died_gets_its_error_and_later_ones_not_ready(
    mosquitto, tmp_path
):
    # Heartbeat 3 s: the stopped child below is not taken for stalled before it is killed.
    # Backoff 4 s: a long enough offline spell to send requests into.
    isolate = {"heartbeat_timeout_s": 3.0, "restart_backoff_s": 4.0, "restart_backoff_max_s": 4.0}
    camera = {"serial": COLOR, "trigger": "mqtt", "isolate": isolate}
    path = write_config(tmp_path, camera, mosquitto.port)
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"])
    with Daemon(path) as daemon, req:
        wait_online(req, timeout=60)
        st = Station(daemon, req, tmp_path)
        before = st.trigger("before", "p-before").json()["verdict"]
        assert before["verdict"] in ("OK", "NG") and before["error"] is None, before
        old = the_camera_child(daemon)

        # A request waiting on the camera when it dies: stop the child, so the request sits in
        # its grab, then kill it. It was taken, so it gets its ERROR verdict (never silence).
        os.kill(old, signal.SIGSTOP)
        corr = b"corr-in-flight"
        st.trigger("in-flight", "p-in-flight", corr=corr, wait=False)
        time.sleep(0.5)
        assert not st.verdicts("in-flight")  # the stopped camera cannot answer
        os.kill(old, signal.SIGKILL)
        answer = st.answer(corr).json()["verdict"]
        assert answer["verdict"] == "ERROR" and answer["error"] == KILLED, answer
        assert st.wait_verdict("in-flight")["verdict"] == "ERROR"
        reject = req.wait(lambda m: m.topic == REJECT and m.json()["part_id"] == "p-in-flight")
        assert reject[0].json()["verdict"] == "ERROR"
        daemon.wait_event("camera.offline")

        # while offline, every request is refused not_ready at once: nothing is queued for a
        # camera that cannot take the part, and no verdict is made up for it (docs/plc.md)
        for i in range(3):
            t0 = time.monotonic()
            corr = f"corr-off-{i}".encode()
            st.trigger(f"off-{i}", f"p-off-{i}", corr=corr, wait=False)
            refused = st.error_for(corr)
            assert time.monotonic() - t0 < 1.5
            assert refused["error"] == "not_ready" and refused["request_id"] == f"off-{i}"
            assert refused["detail"].startswith("camera_offline"), refused

        # back online with a new child: triggers are inspected again
        daemon.wait_event("camera.restarted", timeout=20)
        new = the_camera_child(daemon)
        assert new != old
        after = st.trigger("after", "p-after").json()["verdict"]
        assert after["verdict"] in ("OK", "NG") and after["error"] is None, after
        assert not [v for v in st.verdicts() if v["request_id"].startswith("off-")]
        stop_cleanly(st)


def test_the_camera_process_logs_in_the_station_format(tmp_path):
    # console here, JSON in the tests above: the child must follow the station, not its own
    # default (JSON off a terminal)
    cfg = genicam_station(tmp_path, {"serial": MONO, "roi": ROI}, mqtt={"enabled": False})
    cfg["logging"] = {"level": "info", "format": "console"}
    path = tmp_path / "station.yaml"
    path.write_text(json.dumps(cfg))
    with Daemon(path) as daemon:
        deadline = time.monotonic() + 30
        while not (lines := [x for x in daemon.lines if "capture.genicam.opened" in x]):
            assert daemon.running and time.monotonic() < deadline, daemon.tail()
            time.sleep(0.05)
        assert daemon.terminate() == 0, daemon.tail()
    line = lines[0]
    assert not line.lstrip().startswith("{"), line
    assert "[info" in line and "process=camera" in line and f"serial={MONO}" in line, line
    assert not [x for x in daemon.lines if x.startswith("{")]  # no JSON from either process


def test_a_station_on_the_gentl_simulator_teaches_from_its_own_camera(mosquitto, tmp_path):
    """Issue 34 on a GenICam camera: the next parts the simulated camera takes are taught
    (recorded NG 'teach', never OK), and once accepted the station judges with the new
    version between two parts."""
    products = tmp_path / "products"
    copy_bundle(products, "button")
    path = write_config(tmp_path, {"serial": MONO}, mosquitto.port, products_dir=str(products))
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#"])
    with Daemon(path), req:
        wait_online(req, timeout=60)
        req.wait(VERDICT, n=2, timeout=30)  # free run: inspecting with version 1
        taught = subprocess.run(
            [sys.executable, "-m", "inspectd", "teach", "--product", "button"]
            + ["--config", str(path), "--count", "12", "--json", "--timeout", "240"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert taught.returncode == 0, taught.stderr[-3000:]
        assert json.loads(taught.stdout.splitlines()[-1])["version"] == 2
        teach = [v for v in (m.json() for m in req.messages(VERDICT)) if v["error"] == "teach"]
        assert len(teach) == 12 and {v["verdict"] for v in teach} == {"NG"}
        accepted = subprocess.run(
            [sys.executable, "-m", "inspectd", "teach", "--product", "button"]
            + ["--config", str(path), "--accept", "2"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert accepted.returncode == 0, accepted.stderr[-3000:]
        seen = len(req.messages(VERDICT))
        after = req.wait(VERDICT, n=seen + 2, timeout=30)[-1].json()
        assert after["model"]["version"] == 2 and after["model"]["name"] == "patchcore"
