"""A running station and the versions of its product (issue 34): every verdict says which
version judged it, `inspectd rollback --config` switches the station back between two parts
through its product command, and a station started after a version write was killed runs the
version that was active before. The real daemon with the folder camera (triggered over MQTT),
a private mosquitto, the CLI in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from inspectd.bundle import load_bundle

from support.daemon_process import Daemon
from support.paths import REPO, needs_bundle
from support.products import copy_bundle
from support.requester import Requester, Station, request_station_config, stop_cleanly, wait_online
from support.station import BASE, write_good_frames
from support.versions import model_version, threshold_version

pytestmark = needs_bundle


def start(mosquitto, tmp: Path, products: Path) -> tuple[Daemon, Requester, Path]:
    """The station loops over one good part: every trigger inspects the same frame, so the
    verdicts of two versions compare score for score."""
    config = request_station_config(
        tmp,
        mosquitto.port,
        write_good_frames(tmp / "frames", n=1),
        products_dir=products,
        camera={"trigger": "mqtt"},
    )
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"])
    return Daemon(config), req, config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inspectd", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_rollback_switches_a_running_station_back_to_the_previous_model_and_verdicts(
    mosquitto, tmp_path
):
    products = tmp_path / "products"
    product = copy_bundle(products, "button")
    v1 = load_bundle(product)
    daemon, req, config = start(mosquitto, tmp_path, products)
    with daemon, req:
        wait_online(req)
        st = Station(daemon, req, tmp_path)
        before = [st.trigger(f"v1-{i}").json()["verdict"] for i in range(2)]
        assert [v["model"] for v in before] == [
            {"name": "ae", "sha256": v1.model_sha256, "version": 1}
        ] * 2
        assert [v["verdict"] for v in before] == ["OK", "OK"]  # good parts
        assert st.wait_verdict("v1-1")["model"]["version"] == 1  # on …/verdict too

        # a refit made version 2 (another model, a threshold every part exceeds): the station
        # is switched to it with its product command
        v2 = model_version(product, image=1e-6)
        assert v2.model_sha256 != v1.model_sha256
        answer = st.answer(st.command("product", {"product": "button"})).json()
        assert answer["version"] == 2 and answer["previous_version"] == 1, answer
        after = [st.trigger(f"v2-{i}").json()["verdict"] for i in range(2)]
        assert [(v["verdict"], v["model"]["version"]) for v in after] == [("NG", 2)] * 2
        assert {v["model"]["sha256"] for v in after} == {v2.model_sha256}

        # inspectd rollback: version 1 active again, and the station told (MQTT, its config)
        proc = cli("rollback", "--product", "button", "--config", str(config), "--by", "dave")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "button: version 1 is active (was 2)" in proc.stdout
        assert f"station {BASE} switched to button version 1 between two parts" in proc.stdout
        back = [st.trigger(f"back-{i}").json()["verdict"] for i in range(2)]
        assert [v["model"] for v in back] == [v["model"] for v in before]
        assert [(v["verdict"], v["score"], v["threshold"]) for v in back] == [
            (v["verdict"], v["score"], v["threshold"]) for v in before
        ]
        assert daemon.running
        stop_cleanly(st)


def test_a_station_started_after_a_killed_version_write_runs_the_previous_version(
    mosquitto, tmp_path
):
    products = tmp_path / "products"
    product = copy_bundle(products, "button")
    v2 = threshold_version(product, 0.5)
    # a writer of version 3 killed once its pointer is written, before the switch
    marker = tmp_path / "stopped"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from inspectd.versions import layout\n"
            "def stop(step):\n"
            "    if step == 'pointer_written':\n"
            "        Path(sys.argv[1]).write_text(step); time.sleep(120)\n"
            "layout.on_step = stop\n"
            "from support.versions import threshold_version\n"
            "threshold_version(Path(sys.argv[2]), 0.9)\n",
            str(marker),
            str(product),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")},  # support.versions
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert load_bundle(product).version == 2  # version 3 complete, not active

    daemon, req, _ = start(mosquitto, tmp_path, products)
    with daemon, req:
        wait_online(req)
        st = Station(daemon, req, tmp_path)
        v = st.trigger("after-kill").json()["verdict"]
        assert v["model"]["version"] == 2 and v["threshold"] == 0.5 == v2.thresholds.image
        assert daemon.wait_event("bundle.loaded")[0]["version"] == 2
        stop_cleanly(st)
