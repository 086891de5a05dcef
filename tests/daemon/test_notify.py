"""sd_notify: READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1, as systemd receives them.

A real AF_UNIX datagram socket (a path, or an abstract ``@name``) stands where systemd's would,
its address in $NOTIFY_SOCKET; the daemon runs as a child process, as systemd starts it. The
stall test runs a Station in this process, with a sink that blocks until released: the publish
thread holds work and makes no progress, which is what a hung disk or driver looks like.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import pytest

from inspectd.config import load_station_config
from inspectd.service.sd_notify import Notifier
from inspectd.service.station import Station
from inspectd.synthetic import render_part

from support.daemon_process import Daemon
from support.inspections import BlockingSink
from support.notify import NotifySocket
from support.paths import needs_bundle
from support.station import station_config

pytestmark = needs_bundle


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


def write_frames(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ok, data = cv2.imencode(".png", render_part(21, i, None)[0])
        assert ok
        (folder / f"{i:02d}_good.png").write_bytes(data.tobytes())
    return folder


def write_config(tmp: Path, *, port: int | None = None, **sections: Any) -> Path:
    """The station on tmp/frames, looping at 20 Hz unless ``camera`` says otherwise; MQTT to
    ``port`` (none: off)."""
    camera = sections.pop("camera", {"loop": True, "rate_hz": 20})
    return station_config(tmp, port=port, camera=camera, **sections)


def log_index(daemon: Daemon, event: str) -> int:
    """Position of the first log line of ``event`` (fails if there is none yet)."""
    events = [e.get("event") for e in daemon.events()]
    assert event in events, f"no {event!r} in the log before READY=1:\n{daemon.tail()}"
    return events.index(event)


# -- readiness, reload, stop --------------------------------------------------------------------


def test_ready_follows_warm_up_camera_and_broker_then_reload_and_stop(
    mosquitto, tmp_path, notify_socket
):
    write_frames(tmp_path / "frames")
    config = write_config(tmp_path, port=mosquitto.port)
    with Daemon(config, env={"NOTIFY_SOCKET": notify_socket.address}) as daemon:
        ready = notify_socket.wait_for(lambda f: "READY" in f, daemon=daemon)
        # When READY=1 arrives, the log already shows every start step, in order.
        steps = [
            log_index(daemon, e)
            for e in (
                "bundle.loaded",
                "engine.loaded",
                "engine.warmed_up",
                "capture.folder.opened",
                "mqtt.connected",
            )
        ]
        assert steps[:4] == sorted(steps[:4]), daemon.tail()
        before = [f.get("STATUS", "") for _, f in notify_socket.messages[:ready]]
        # the engine load asks for more start time (a TensorRT build can take minutes)
        extend = [f for _, f in notify_socket.messages[:ready] if "EXTEND_TIMEOUT_USEC" in f]
        assert extend and extend[0]["STATUS"] == "loading engine for button", before
        assert int(extend[0]["EXTEND_TIMEOUT_USEC"]) == 60_000_000
        expected = [
            "loading bundle button",
            "warming up engine onnxruntime",
            "opening camera",
            f"connecting to MQTT broker {mosquitto.host}:{mosquitto.port}",
        ]
        positions = [next(i for i, s in enumerate(before) if s.startswith(e)) for e in expected]
        assert positions == sorted(positions), before
        assert notify_socket.messages[ready][1]["STATUS"].startswith("inspecting button: ")
        assert "mqtt connected" in notify_socket.messages[ready][1]["STATUS"]

        # Periodic STATUS= lines count the parts.
        notify_socket.wait_for(
            lambda f: (
                "STATUS" in f
                and " 0 parts" not in f["STATUS"]
                and f["STATUS"].startswith("inspecting")
            ),
            timeout=20,
        )

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC (Type=notify-reload), then READY=1 again.
        n = len(notify_socket.messages)
        sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        daemon.signal(signal.SIGHUP)
        reloading = notify_socket.wait_for(lambda f: "RELOADING" in f)
        assert reloading >= n
        fields = notify_socket.messages[reloading][1]
        assert fields["RELOADING"] == "1" and 0 <= int(fields["MONOTONIC_USEC"]) - sent < 10_000_000
        again = notify_socket.wait_for(lambda f: "READY" in f and "reloaded" in f.get("STATUS", ""))
        assert again > reloading

        # SIGTERM: STOPPING=1 at once, before the drain; the daemon exits 0 and says "stopped".
        n = len(notify_socket.messages)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, daemon.tail()
        notify_socket.poll(0.5)
    after = [f for _, f in notify_socket.messages[n:]]
    stopping = next(i for i, f in enumerate(after) if "STOPPING" in f)
    draining = next(
        i for i, f in enumerate(after) if f.get("STATUS", "").startswith("draining outbox")
    )
    assert stopping < draining, after
    assert after[-1].get("STATUS") == "stopped", after
    assert not any("READY" in f for f in after)


def test_a_broker_outage_does_not_hold_back_ready_abstract_socket(tmp_path):
    sock = NotifySocket(abstract=True)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_frames(tmp_path / "frames")
    config = write_config(tmp_path, port=port, mqtt={"drain_timeout_s": 0})
    try:
        with Daemon(config, env={"NOTIFY_SOCKET": sock.address}) as daemon:
            ready = sock.wait_for(lambda f: "READY" in f, daemon=daemon)
            log_index(daemon, "mqtt.connect_failed")  # the attempt was made, and failed
            assert "mqtt disconnected" in sock.messages[ready][1]["STATUS"]
            assert daemon.terminate() == 0, daemon.tail()
    finally:
        sock.close()


def test_the_daemon_runs_without_notify_socket(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    write_frames(tmp_path / "frames")
    config = write_config(tmp_path, camera={"source": "folder", "path": str(tmp_path / "frames")})
    with Daemon(config) as daemon:
        assert daemon.wait(timeout=60) == 0, daemon.tail()
    assert daemon.events("station.ready")[0]["notify"] is False
    lines = (tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()
    assert len(lines) == 3


# -- watchdog -----------------------------------------------------------------------------------


def test_watchdog_pings_at_half_the_interval_and_an_idle_camera_is_not_stalled(
    tmp_path, notify_socket
):
    frames = write_frames(tmp_path / "frames")
    config = write_config(tmp_path, service={"stall_s": 1.0, "status_interval_s": 1.0})
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000"}
    verdicts = tmp_path / "out" / "verdicts.jsonl"
    with Daemon(config, env=env) as daemon:
        notify_socket.wait_for(lambda f: "READY" in f, daemon=daemon)
        start = time.monotonic()
        notify_socket.poll(3.0)
        pings = notify_socket.times("WATCHDOG", since=start)
        assert len(verdicts.read_text().splitlines()) >= 20  # parts flowed meanwhile
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert 4 <= len(pings) <= 8, pings
        assert all(0.3 <= g <= 0.9 for g in gaps), gaps  # WATCHDOG_USEC / 2 = 0.5 s

        # The camera runs dry (the looping folder emptied): idle, not stalled; pings go on.
        for f in frames.iterdir():
            f.unlink()
        time.sleep(1.0)
        parts = len(verdicts.read_text().splitlines())
        idle = time.monotonic()
        notify_socket.poll(3.0)  # three times stall_s
        assert len(verdicts.read_text().splitlines()) == parts
        assert len(notify_socket.times("WATCHDOG", since=idle)) >= 5
        assert not any("stalled" in s for s in notify_socket.texts("STATUS"))
        assert daemon.terminate() == 0, daemon.tail()


def test_no_watchdog_pings_for_another_pid(tmp_path, notify_socket):
    write_frames(tmp_path / "frames")
    config = write_config(tmp_path)
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
    with Daemon(config, env=env) as daemon:
        notify_socket.wait_for(lambda f: "READY" in f, daemon=daemon)
        notify_socket.poll(1.5)
        assert notify_socket.times("WATCHDOG") == []
        assert daemon.terminate() == 0, daemon.tail()


def test_pings_stop_while_a_stage_is_stalled_and_resume_after(tmp_path, notify_socket):
    write_frames(tmp_path / "frames")
    stall_s, interval = 1.0, 0.2
    config = load_station_config(
        write_config(tmp_path, service={"stall_s": stall_s, "status_interval_s": 0.5})
    )
    sink = BlockingSink(at=10)
    notifier = Notifier(notify_socket.address, watchdog_usec=int(interval * 2e6))
    station = Station(config, extra_sinks=[sink], notifier=notifier)
    stop = threading.Event()
    station.start()
    runner = threading.Thread(target=station.run, kwargs={"stop": stop})
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while not sink.blocked.is_set():  # read as they come: arrival times matter here
            assert time.monotonic() < deadline, "the sink never got its part"
            notify_socket.poll(0.02)
        blocked = time.monotonic()
        notify_socket.poll(stall_s + 2.0)
        pings = notify_socket.times("WATCHDOG")
        assert pings and pings[0] < blocked  # it pinged while parts flowed
        last = pings[-1]
        # no ping once the publish thread has held its part for stall_s (+ one interval)
        assert last <= blocked + stall_s + interval + 0.3, (last - blocked, pings)
        assert time.monotonic() - last >= 1.0
        assert "publish" in station.stalled()
        assert any(
            s.startswith("stalled: no progress in publish") for s in notify_socket.texts("STATUS")
        )
        assert any(p.startswith("stalled: publish") for p in station.health_snapshot()["problems"])

        # Released: the thread moves on and the pings come back.
        sink.release.set()
        released = time.monotonic()
        notify_socket.poll(1.0)
        again = notify_socket.times("WATCHDOG", since=released)
        assert again and again[0] - released <= interval + 0.3, again
        assert station.stalled() == {}
    finally:
        sink.release.set()
        stop.set()
        runner.join(30)
        station.stop(drain_timeout=0)
        notifier.close()


def test_a_long_lived_thread_that_dies_is_a_problem_and_stops_the_pings(
    mosquitto, tmp_path, notify_socket
):
    """Issue 31: the outbox feeder ended on an exception it did not expect and nothing noticed:
    no verdict went out again, health ok, /healthz 200, the pings went on. A bug is injected
    into the outbox read the feeder makes (nothing real raises there any more): the thread dies,
    health names it, /healthz answers 503 and the pings stop, so systemd restarts the station."""
    write_frames(tmp_path / "frames")
    interval = 0.2
    config = load_station_config(
        write_config(
            tmp_path,
            port=mosquitto.port,
            service={"status_interval_s": 0.5},
            metrics={"enabled": True, "port": 0},
        )
    )
    notifier = Notifier(notify_socket.address, watchdog_usec=int(interval * 2e6))
    station = Station(config, notifier=notifier)
    stop = threading.Event()
    station.start()
    runner = threading.Thread(target=station.run, kwargs={"stop": stop})
    runner.start()
    try:
        notify_socket.poll(1.0)
        assert notify_socket.times("WATCHDOG"), notify_socket.texts()
        assert station.outbox is not None and station.metrics_server is not None

        def bug(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected: a bug in the outbox read")

        station.outbox.pending = bug  # type: ignore[method-assign]
        deadline = time.monotonic() + 10
        while not any(p.startswith("thread_dead") for p in station.health_snapshot()["problems"]):
            assert time.monotonic() < deadline, station.health_snapshot()["problems"]
            notify_socket.poll(0.1)
        died = time.monotonic()
        (problem,) = [
            p for p in station.health_snapshot()["problems"] if p.startswith("thread_dead")
        ]
        assert "outbox-feeder" in problem, problem
        assert "outbox-feeder" in station.stalled()
        with urllib.request.urlopen(station.metrics_server.url + "/metrics", timeout=10) as r:
            assert b"inspectd_live 0.0" in r.read()
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(station.metrics_server.url + "/healthz", timeout=10)
        assert answer.value.code == 503
        assert "outbox-feeder" in json.loads(answer.value.read())["stalled"]

        notify_socket.poll(1.5)
        late = notify_socket.times("WATCHDOG", since=died + interval + 0.3)
        assert late == [], "pings went on after the feeder died"
        assert any("outbox-feeder" in s for s in notify_socket.texts("STATUS"))
    finally:
        stop.set()
        runner.join(30)
        station.stop(drain_timeout=0)
        notifier.close()


def test_extending_asks_for_time_until_the_step_ends_or_the_limit(notify_socket) -> None:
    notifier = Notifier(notify_socket.address)
    with notifier.extending("building engine", every_s=0.2):
        time.sleep(0.7)
    notify_socket.poll(0.5)
    times = notify_socket.times("EXTEND_TIMEOUT_USEC")
    assert 3 <= len(times) <= 5, times  # at 0, 0.2, 0.4, 0.6 s; none after the step ended
    fields = [f for _, f in notify_socket.messages if "EXTEND_TIMEOUT_USEC" in f]
    assert {(f["EXTEND_TIMEOUT_USEC"], f["STATUS"]) for f in fields} == {
        ("400000", "building engine")
    }

    n = len(notify_socket.messages)
    with notifier.extending("hung step", every_s=0.1, limit_s=0.25):
        time.sleep(0.8)  # a step that hangs: after the limit systemd's own timeout applies
    notify_socket.poll(0.3)
    assert 2 <= sum("EXTEND_TIMEOUT_USEC" in f for _, f in notify_socket.messages[n:]) <= 4
