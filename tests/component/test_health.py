"""HealthMonitor: when health.json is rewritten and when …/health is published."""

from __future__ import annotations

import json
import time
from pathlib import Path

from inspectd.contract.topics import Topics
from inspectd.mqtt.broker import LocalBroker, free_port
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.service.health import HealthMonitor

from support.mqtt_client import Subscriber

TOPICS = Topics("inspectd/v1/t/l/health-test")


def make_publisher(port: int) -> MqttPublisher:
    return MqttPublisher(
        host="127.0.0.1",
        port=port,
        protocol="5",
        client_id="health-test",
        keepalive_s=30,
        topics=TOPICS,
        status_fields={},
    )


def test_changes_are_written_counts_are_not_and_publishing_waits_for_a_connection(
    tmp_path: Path, mosquitto: LocalBroker
) -> None:
    state = {"state": "degraded", "problems": ["outbox_dropped: 3 verdicts"], "product": "a"}
    publisher = make_publisher(free_port())  # nothing listens there: never connected
    monitor = HealthMonitor(
        snapshot=lambda: dict(state),
        stats=dict,
        publisher=publisher,
        topics=TOPICS,
        path=tmp_path / "health.json",
        interval_s=60,
        stats_interval_s=60,
    )
    monitor.check(force=True)
    assert json.loads((tmp_path / "health.json").read_text())["problems"] == state["problems"]
    state["problems"] = ["outbox_dropped: 4 verdicts"]  # a count moved: not a change
    monitor.check()
    assert "3 verdicts" in (tmp_path / "health.json").read_text()
    state["problems"] = ["mqtt_disconnected: refused"]  # a different problem: a change
    monitor.check()
    assert "refused" in (tmp_path / "health.json").read_text()
    assert publisher.stats()["published"] == 0  # retained health does not pile up offline

    # once connected, the current health goes out at the next check, changed or not
    online = make_publisher(mosquitto.port)
    monitor.publisher = online
    with Subscriber(mosquitto.host, mosquitto.port, TOPICS.health) as sub:
        online.start()
        try:
            deadline = time.monotonic() + 10
            while not online.connected:
                assert time.monotonic() < deadline, "publisher did not connect"
                time.sleep(0.05)
            monitor.check()
            got = sub.wait_for(1, timeout=5)[0]
            assert got.json()["problems"] == ["mqtt_disconnected: refused"]
        finally:
            online.stop()


def test_a_snapshot_taken_before_the_connection_came_up_is_not_published(
    tmp_path: Path, mosquitto: LocalBroker
) -> None:
    online = make_publisher(mosquitto.port)
    snapshots: list[bool] = []

    def snapshot() -> dict:
        # The connection comes up while the first snapshot is being taken: the race this guards.
        if not snapshots:
            online.start()
            deadline = time.monotonic() + 10
            while not online.connected:
                assert time.monotonic() < deadline, "publisher did not connect"
                time.sleep(0.02)
        snapshots.append(True)
        first = len(snapshots) == 1
        return {
            "state": "degraded" if first else "ok",
            "problems": ["mqtt_disconnected: connecting"] if first else [],
        }

    monitor = HealthMonitor(
        snapshot=snapshot,
        stats=dict,
        publisher=online,
        topics=TOPICS,
        path=tmp_path / "health.json",
        interval_s=60,
        stats_interval_s=60,
    )
    with Subscriber(mosquitto.host, mosquitto.port, TOPICS.health) as sub:
        try:
            monitor.check(force=True)  # read "not connected", then the snapshot saw it connect
            assert "connecting" in (tmp_path / "health.json").read_text()
            monitor.check()  # the first check that starts connected sends the current health
            got = sub.wait_for(1, timeout=5)
            time.sleep(0.3)
            assert [m.json()["state"] for m in sub.messages(TOPICS.health)] == ["ok"], got
        finally:
            online.stop()
