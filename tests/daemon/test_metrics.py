"""/metrics and /healthz over HTTP: what Prometheus and a liveness probe see.

Stations run the shipped button bundle on the folder camera with good, defective and broken
frames; the exposition is fetched over a real socket and parsed with prometheus_client's own
parser, and its counts are checked against the verdicts the station wrote.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inspectd.config import load_station_config
from inspectd.inspection import STAGES, THREADS
from inspectd.service.station import Station
from inspectd.synthetic import render_part

from support.daemon_process import Daemon
from support.inspections import BlockingSink
from support.paths import needs_bundle
from support.station import station_config, write_png

pytestmark = needs_bundle


def write_frames(folder: Path) -> int:
    """Good parts, defects and two frames that cannot be inspected; returns how many."""
    folder.mkdir(parents=True)
    for i in range(4):
        write_png(folder / f"{i:02d}_good.png", render_part(31, i, None)[0])
    for i, defect in enumerate(("crack", "scratch", "crack"), start=4):
        write_png(folder / f"{i:02d}_{defect}.png", render_part(31, i, defect)[0])
    (folder / "07_empty.png").write_bytes(b"")  # ERROR: empty file
    (folder / "08_text.png").write_bytes(b"not an image at all")  # ERROR: cannot decode
    return 9


def write_config(tmp: Path, *, port: int | None = None, **sections: Any) -> Path:
    """The station on tmp/frames (read once), metrics on a free port, MQTT to ``port`` (none:
    off)."""
    return station_config(tmp, port=port, **{"metrics": {"enabled": True, "port": 0}, **sections})


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, base: str) -> None:
        status, body = get(base + "/metrics")
        assert status == 200
        self.families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def value(self, sample: str, **labels: str) -> float:
        found = [
            s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, f"{sample}{labels}: {found}"
        return found[0]


def verdict_counts(tmp: Path) -> Counter[str]:
    lines = (tmp / "out" / "verdicts.jsonl").read_text().splitlines()
    return Counter(json.loads(line)["verdict"] for line in lines)


def test_counters_and_histograms_match_the_verdicts_written(tmp_path):
    parts = write_frames(tmp_path / "frames")
    station = Station(load_station_config(write_config(tmp_path)))
    station.start()
    try:
        stats = station.run()  # the folder ends: every part has passed every sink
        assert station.metrics_server is not None
        base = station.metrics_server.url
        assert base.startswith("http://127.0.0.1:") and station.metrics_server.port > 0
        scrape = Scrape(base)
        written = verdict_counts(tmp_path)
        assert sum(written.values()) == parts and written["ERROR"] == 2 and written["NG"] >= 1
        for verdict in ("OK", "NG", "ERROR"):
            assert (
                scrape.value("inspectd_verdicts_total", product="button", verdict=verdict)
                == written[verdict]
            ), verdict
        assert stats.verdicts == written
        # every part went through capture, decide and publish; only decodable ones through
        # preprocess and the engine
        inspected = written["OK"] + written["NG"]
        expected = {
            "capture": parts,
            "preprocess": inspected,
            "infer": inspected,
            "decide": parts,
            "publish": parts,
        }
        assert set(expected) == set(STAGES)
        for stage, n in expected.items():
            assert scrape.value("inspectd_stage_seconds_count", stage=stage) == n, stage
            assert scrape.value("inspectd_stage_seconds_bucket", stage=stage, le="+Inf") == n
        assert scrape.value("inspectd_latency_seconds_count") == parts
        assert scrape.value("inspectd_frames_total") == parts
        # outbox, camera, engine and drift gauges are there
        assert station.outbox is not None
        assert scrape.value("inspectd_outbox_depth") == station.outbox.stats()["depth"]
        assert scrape.value("inspectd_outbox_durable") == 1
        assert "inspectd_outbox_dropped" in scrape.families
        assert scrape.value("inspectd_camera_up") == 1
        assert scrape.value("inspectd_camera_fps") >= 0
        assert (
            scrape.value("inspectd_info", station="cam1", product="button", engine="onnxruntime")
            == 1
        )
        assert scrape.value("inspectd_threshold", kind="image") > 0
        assert scrape.value("inspectd_drifting") == 0
        assert "inspectd_mqtt_connected" not in scrape.families  # MQTT is off
        assert scrape.value("inspectd_live") == 1
        for thread in THREADS:
            assert scrape.value("inspectd_thread_stalled", thread=thread) == 0

        status, body = get(base + "/healthz")
        assert status == 200 and json.loads(body) == {"status": "live", "stalled": {}}
        assert get(base + "/nothing")[0] == 404
        # health.json says where the endpoints are
        health = json.loads((tmp_path / "state" / "health.json").read_text())
        assert health["metrics"] == {"url": base, "port": station.metrics_server.port}
    finally:
        station.stop()
    with pytest.raises(OSError):  # closed with the station
        socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=2).close()


def test_healthz_is_503_naming_the_stalled_stage_and_200_again_after(tmp_path):
    write_frames(tmp_path / "frames")
    config = write_config(
        tmp_path,
        camera={"source": "folder", "path": str(tmp_path / "frames"), "loop": True, "rate_hz": 50},
        service={"stall_s": 1.0, "status_interval_s": 1.0},
    )
    sink = BlockingSink(at=3)
    station = Station(load_station_config(config), extra_sinks=[sink])
    stop = threading.Event()
    station.start()
    runner = threading.Thread(target=station.run, kwargs={"stop": stop})
    runner.start()
    try:
        assert station.metrics_server is not None
        base = station.metrics_server.url
        assert sink.blocked.wait(20)
        assert get(base + "/healthz")[0] == 200  # holding a part for less than stall_s is fine
        deadline = time.monotonic() + 5
        while (answer := get(base + "/healthz"))[0] != 503:
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        time.sleep(1.5)  # long enough for the threads queued up behind it to count, if they did
        status, raw = get(base + "/healthz")
        body = json.loads(raw)
        assert status == 503 and body["status"] == "stalled"
        assert list(body["stalled"]) == ["publish"]  # capture and infer wait on full queues
        assert body["stalled"]["publish"] >= 2.0
        scrape = Scrape(base)
        assert scrape.value("inspectd_live") == 0
        assert scrape.value("inspectd_thread_stalled", thread="publish") == 1
        assert scrape.value("inspectd_thread_stalled", thread="capture") == 0  # waits, not stalled
        assert scrape.value("inspectd_health_ok") == 0

        sink.release.set()
        deadline = time.monotonic() + 5
        while (answer := get(base + "/healthz"))[0] != 200:
            assert time.monotonic() < deadline, answer
            time.sleep(0.05)
    finally:
        sink.release.set()
        stop.set()
        runner.join(30)
        station.stop(drain_timeout=0)


def test_the_daemon_serves_metrics_on_the_configured_address_only(mosquitto, tmp_path):
    write_frames(tmp_path / "frames")
    config = write_config(
        tmp_path,
        camera={"source": "folder", "path": str(tmp_path / "frames"), "loop": True, "rate_hz": 20},
        port=mosquitto.port,
    )
    with Daemon(config) as daemon:
        listening = daemon.wait_event("metrics.listening")[0]
        port = listening["port"]
        base = f"http://127.0.0.1:{port}"
        assert listening["host"] == "127.0.0.1" and listening["url"] == base + "/metrics"
        daemon.wait_event("station.ready")
        deadline = time.monotonic() + 20
        while (scrape := Scrape(base)).value(
            "inspectd_verdicts_total", product="button", verdict="OK"
        ) < 3:
            assert time.monotonic() < deadline, daemon.tail()
            time.sleep(0.2)
        assert scrape.value("inspectd_mqtt_connected") == 1
        assert get(base + "/healthz")[0] == 200
        # bound to 127.0.0.1 only: another loopback address of this machine is refused
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
        health = json.loads((tmp_path / "state" / "health.json").read_text())
        assert health["metrics"]["port"] == port
        assert daemon.terminate() == 0, daemon.tail()
    counted = sum(
        scrape.value("inspectd_verdicts_total", product="button", verdict=v)
        for v in ("OK", "NG", "ERROR")
    )
    assert counted <= sum(verdict_counts(tmp_path).values())


def test_a_taken_port_is_a_startup_error(tmp_path):
    write_frames(tmp_path / "frames")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, metrics={"enabled": True, "port": port})
        with Daemon(config) as daemon:
            assert daemon.wait(timeout=60) == 2, daemon.tail()
    assert any(f"metrics: cannot listen on 127.0.0.1 port {port}" in line for line in daemon.lines)
