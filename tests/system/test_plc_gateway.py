"""deploy/examples/plc_gateway.py: the Gateway logic without a broker, then end to end."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from inspectd.contract.verdict import iso_utc

from support.paths import REPO

EXAMPLE = REPO / "deploy" / "examples" / "plc_gateway.py"
BASE = "inspectd/v1/plant/line1"
ST1 = f"{BASE}/st1"
ST2 = f"{BASE}/st2"


def _load_example():
    # deploy/examples is not a package (not installed with inspectd.deploy): load it by path.
    spec = importlib.util.spec_from_file_location("plc_gateway_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


plc = _load_example()
NOW = 1_750_000_000.0


def verdict(
    seq: int,
    verdict: str = "OK",
    *,
    station: str = "st1",
    replayed: bool = False,
    part_id: str | None = None,
) -> bytes:
    return json.dumps(
        {
            "schema": "inspectd.verdict/1",
            "seq": seq,
            "station": station,
            "product": "button",
            "part_id": part_id or f"p{seq}",
            "request_id": None,
            "verdict": verdict,
            "score": 0.5,
            "threshold": 0.4,
            "regions": [],
            "model": {},
            "camera": {},
            "t_capture": iso_utc(NOW),
            "t_verdict": iso_utc(NOW),
            "latency_ms": 12.0,
            "replayed": replayed,
            "durable": True,
            "error": None,
        }
    ).encode()


def reject(
    seq: int,
    verdict: str = "NG",
    *,
    station: str = "st1",
    deadline: float | None = NOW + 10,
    part_id: str | None = None,
) -> bytes:
    return json.dumps(
        {
            "station": station,
            "part_id": part_id or f"p{seq}",
            "seq": seq,
            "verdict": verdict,
            "deadline_ts": None if deadline is None else iso_utc(deadline),
        }
    ).encode()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []
        self.lock = threading.Lock()

    def __call__(self, station: str, part_id: str, seq: int, verdict: str) -> None:
        with self.lock:
            self.calls.append((station, part_id, seq, verdict))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def gw(tmp_path: Path, rec: Recorder):
    return plc.Gateway(tmp_path / "state.json", divert=rec, now=lambda: NOW)


# -- Gateway without a broker -------------------------------------------------------------------


def test_divert_ng_and_error(gw, rec) -> None:
    gw.handle(f"{ST1}/reject", reject(1, "NG"))
    gw.handle(f"{ST1}/reject", reject(2, "ERROR"))  # could not be inspected: reject it too
    gw.handle(f"{ST1}/reject", reject(3, deadline=None))  # no deadline known: divert
    assert rec.calls == [("st1", "p1", 1, "NG"), ("st1", "p2", 2, "ERROR"), ("st1", "p3", 3, "NG")]
    assert gw.stats["diverted"] == 3


def test_duplicates_ignored_per_station(gw, rec) -> None:
    gw.handle(f"{ST1}/reject", reject(5))
    gw.handle(f"{ST1}/reject", reject(5))  # QoS 1 redelivery
    gw.handle(f"{ST1}/reject", reject(4))  # below the highest acted on
    gw.handle(f"{ST2}/reject", reject(5, station="st2"))  # same seq, other station: not a dup
    assert rec.calls == [("st1", "p5", 5, "NG"), ("st2", "p5", 5, "NG")]
    assert gw.stats["duplicate_rejects"] == 2


def test_state_survives_a_new_gateway(tmp_path, rec) -> None:
    state = tmp_path / "sub" / "state.json"
    first = plc.Gateway(state, divert=rec, now=lambda: NOW)
    first.handle(f"{ST1}/reject", reject(7))
    first.handle(f"{ST1}/verdict", verdict(7, "NG"))
    assert json.loads(state.read_text())["rejects"] == {ST1: 7}
    assert [p.name for p in state.parent.iterdir()] == ["state.json"]  # no temp file left

    second = plc.Gateway(state, divert=rec, now=lambda: NOW)  # the gateway restarted
    second.handle(f"{ST1}/reject", reject(7))  # redelivered after the restart
    second.handle(f"{ST1}/verdict", verdict(9))
    second.handle(f"{ST1}/reject", reject(8))
    assert rec.calls == [("st1", "p7", 7, "NG"), ("st1", "p8", 8, "NG")]
    assert second.stats["duplicate_rejects"] == 1
    assert second.stats["gaps"] == 1  # 8 missing between 7 (before the restart) and 9


def test_corrupt_state_file_refuses_to_start(tmp_path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(RuntimeError, match="fix or delete"):
        plc.Gateway(state)


def test_expired_deadline_not_diverted_but_recorded(gw, rec, caplog) -> None:
    caplog.set_level(logging.INFO, logger="plc_gateway")
    gw.handle(f"{ST1}/reject", reject(3, deadline=NOW - 2))
    assert rec.calls == []
    assert gw.stats["expired"] == 1
    assert gw.rejects[ST1] == 3
    assert "already passed the diverter" in caplog.text
    gw.handle(f"{ST1}/reject", reject(3, deadline=NOW - 2))
    assert gw.stats["duplicate_rejects"] == 1


def test_seq_gap_reported(gw, caplog) -> None:
    caplog.set_level(logging.INFO, logger="plc_gateway")
    for seq in (1, 2, 6, 6, 8):
        gw.handle(f"{ST1}/verdict", verdict(seq))
    assert gw.stats["gaps"] == 2
    assert gw.stats["duplicate_verdicts"] == 1
    assert "seq 3..5 missing" in caplog.text
    assert "seq 7 missing" in caplog.text


def test_replayed_verdict_counted_not_a_gap(gw) -> None:
    gw.handle(f"{ST1}/verdict", verdict(1))
    gw.handle(f"{ST1}/verdict", verdict(1, replayed=True))  # replay of one already seen
    gw.handle(f"{ST1}/verdict", verdict(2, replayed=True))  # replay of one never seen
    assert gw.stats["replayed"] == 2
    assert gw.stats["duplicate_verdicts"] == 1
    assert gw.stats["gaps"] == 0
    assert gw.verdicts[ST1] == 2


@pytest.mark.parametrize(
    "topic, payload",
    [
        (f"{ST1}/reject", b"{not json"),
        (f"{ST1}/reject", b"\xff\xfe"),
        (f"{ST1}/reject", b"[1, 2]"),
        (f"{ST1}/reject", b'{"part_id": "p1", "verdict": "NG"}'),  # no seq
        (f"{ST1}/reject", b'{"seq": "1", "part_id": "p1", "verdict": "NG"}'),
        (f"{ST1}/reject", b'{"seq": true, "part_id": "p1", "verdict": "NG"}'),
        (f"{ST1}/reject", b'{"seq": 1, "part_id": "p1", "verdict": "OK"}'),
        (f"{ST1}/verdict", b'{"seq": -1}'),
        (f"{ST1}/status", b'{"state": 3}'),
    ],
)
def test_malformed_payload_skipped(gw, rec, topic, payload) -> None:
    gw.handle(topic, payload)
    assert gw.stats["malformed"] == 1
    assert rec.calls == []
    gw.handle(f"{ST1}/reject", reject(1))  # still works afterwards
    assert rec.calls == [("st1", "p1", 1, "NG")]


def test_bad_deadline_still_diverts(gw, rec) -> None:
    payload = json.loads(reject(1))
    payload["deadline_ts"] = "soon"
    gw.handle(f"{ST1}/reject", json.dumps(payload).encode())
    assert rec.calls == [("st1", "p1", 1, "NG")]


def test_failed_divert_is_not_recorded(tmp_path) -> None:
    def broken(*args: object) -> None:
        raise OSError("PLC unreachable")

    gw = plc.Gateway(tmp_path / "state.json", divert=broken, now=lambda: NOW)
    gw.handle(f"{ST1}/reject", reject(1))
    assert gw.stats["divert_failed"] == 1
    assert ST1 not in gw.rejects


def test_status_changes(gw, caplog) -> None:
    caplog.set_level(logging.INFO, logger="plc_gateway")
    gw.handle(f"{ST1}/status", b'{"state": "online", "boot_id": "a"}')
    gw.handle(f"{ST1}/status", b'{"state": "offline", "boot_id": "a"}')
    gw.handle(f"{ST1}/status", b'{"state": "online", "boot_id": "b"}')
    assert gw.status == {ST1: "online"}
    assert "OFFLINE" in caplog.text
    assert "restarted" in caplog.text


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def health(interval: float = 1.0) -> bytes:
    return json.dumps({"state": "ok", "problems": [], "interval_s": interval}).encode()


def test_a_station_whose_health_stops_raises_the_alarm_until_it_comes_back(tmp_path) -> None:
    # A hung daemon keeps its MQTT connection (no Last Will): only its health stops.
    clock, alarms = Clock(), []
    gw = plc.Gateway(
        tmp_path / "state.json",
        divert=Recorder(),
        alarm=lambda station, why: alarms.append((station, why)),
        monotonic=clock,
    )
    gw.handle(f"{ST1}/status", b'{"state": "online", "boot_id": "a"}')
    gw.handle(f"{ST1}/health", health(1.0))
    clock.t += 2.9
    assert gw.check_silence() == [] and alarms == []
    clock.t += 0.2  # 3.1 s: three intervals late
    assert gw.check_silence() == [ST1]
    assert gw.check_silence() == []  # raised once, not every second
    assert alarms == [(ST1, "SILENT: no health for 3 s (sent every 1 s), it may be hung")]
    assert gw.stats["silent"] == 1
    gw.handle(f"{ST1}/health", health(1.0))
    assert alarms[-1] == (ST1, None) and gw.alarmed == {}
    clock.t += 2.0
    assert gw.check_silence() == []


def test_offline_and_stopped_alarm_and_neither_is_called_silent(tmp_path) -> None:
    clock, alarms = Clock(), []
    gw = plc.Gateway(
        tmp_path / "state.json",
        alarm=lambda station, why: alarms.append((station, why)),
        monotonic=clock,
    )
    gw.handle(f"{ST1}/health", health(1.0))  # no status yet: not known to inspect
    gw.handle(f"{ST2}/status", b'{"state": "online", "boot_id": "a"}')
    gw.handle(f"{ST2}/health", health(1.0))
    gw.handle(f"{ST2}/status", b'{"state": "stopped", "boot_id": "a"}')  # maintenance
    clock.t += 10
    assert gw.check_silence() == []
    assert alarms == [(ST2, "STOPPED (a clean shutdown)")]
    gw.handle(f"{ST2}/status", b'{"state": "offline", "boot_id": "a"}')
    gw.handle(f"{ST2}/health", health(1.0))  # health does not clear an offline alarm
    assert alarms[-1] == (ST2, "OFFLINE (its Last Will)") and len(alarms) == 2
    # back online: cleared, and the old health does not make the new run look silent
    gw.handle(f"{ST2}/status", b'{"state": "online", "boot_id": "b"}')
    clock.t += 10
    assert gw.check_silence() == []
    assert alarms[-1] == (ST2, None)


def test_health_without_a_usable_interval_is_malformed(gw) -> None:
    for bad in (b'{"state": "ok"}', b'{"interval_s": 0}', b'{"interval_s": true}'):
        gw.handle(f"{ST1}/health", bad)
    assert gw.stats["malformed"] == 3 and gw.health == {}


def test_a_failed_alarm_write_is_logged_and_the_state_kept(tmp_path, caplog) -> None:
    def broken(station: str, why: str | None) -> None:
        raise OSError("PLC unreachable")

    gw = plc.Gateway(tmp_path / "state.json", alarm=broken)
    gw.handle(f"{ST1}/status", b'{"state": "online", "boot_id": "a"}')
    gw.handle(f"{ST1}/status", b'{"state": "offline", "boot_id": "a"}')
    assert "ALARM WRITE FAILED" in caplog.text
    assert gw.alarmed == {ST1: "OFFLINE (its Last Will)"}


# -- end to end against a private mosquitto ----------------------------------------------------


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


class Publisher:
    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="test-daemon", protocol=mqtt.MQTTv5
        )
        self.client.connect(host, port, 30)
        self.client.loop_start()

    def send(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry: int | None = None
    ) -> None:
        props = None
        if expiry is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _start_gateway(broker, state: Path, rec: Recorder):
    gw = plc.Gateway(state, divert=rec)
    client = plc.make_client(
        gw,
        host=broker.host,
        port=broker.port,
        base=f"{BASE}/+",
        client_id="test-plc-gateway",
        session_expiry_s=60,
    )
    client.loop_start()
    return gw, client


def _stop(client) -> None:
    client.disconnect()
    client.loop_stop()


def test_end_to_end_with_broker(mosquitto, tmp_path) -> None:
    state = tmp_path / "state.json"
    rec = Recorder()
    pub = Publisher(mosquitto.host, mosquitto.port)
    try:
        pub.send(f"{ST1}/status", b'{"state": "online", "boot_id": "a"}', retain=True)
        gw, client = _start_gateway(mosquitto, state, rec)
        try:
            _wait(lambda: gw.status.get(ST1) == "online")  # subscribed: the retained status came
            now = time.time()
            sends = [
                (f"{ST1}/verdict", verdict(1)),
                (f"{ST1}/verdict", verdict(2, "NG")),
                (f"{ST1}/reject", reject(2, deadline=now + 30)),
                (f"{ST1}/verdict", verdict(3, "ERROR")),
                (f"{ST1}/reject", reject(3, "ERROR", deadline=now + 30)),
                # the daemon restarted: it replays what it had not seen acknowledged
                (f"{ST1}/verdict", verdict(3, "ERROR", replayed=True)),
                (f"{ST1}/reject", reject(3, "ERROR", deadline=now + 30)),  # duplicate seq
                (f"{ST1}/verdict", verdict(4, "NG", replayed=True)),  # replayed, never seen
                (f"{ST1}/reject", reject(4, deadline=now + 30)),
                (f"{ST1}/verdict", verdict(7, "NG")),  # gap: 5..6 lost in a crash
                (f"{ST1}/reject", reject(7, deadline=now - 1)),  # too late for the diverter
                (f"{ST2}/verdict", verdict(3, "NG", station="st2")),
                (f"{ST2}/reject", reject(3, station="st2", deadline=None)),
                (f"{ST1}/status", b'{"state": "offline", "boot_id": "a"}'),
            ]
            for topic, payload in sends:
                pub.send(topic, payload, expiry=30 if topic.endswith("/reject") else None)
            _wait(lambda: gw.stats["messages"] >= 1 + len(sends))
        finally:
            _stop(client)

        assert rec.calls == [
            ("st1", "p2", 2, "NG"),
            ("st1", "p3", 3, "ERROR"),
            ("st1", "p4", 4, "NG"),
            ("st2", "p3", 3, "NG"),
        ]
        assert gw.stats["duplicate_rejects"] == 1
        assert gw.stats["replayed"] == 2
        assert gw.stats["gaps"] == 1
        assert gw.stats["expired"] == 1
        assert gw.status[ST1] == "offline"
        assert json.loads(state.read_text())["rejects"] == {ST1: 7, ST2: 3}

        # While the gateway is away, the persistent session queues rejects for it, redeliveries
        # included; the restarted gateway acts on the new one only.
        pub.send(f"{ST1}/reject", reject(4, deadline=time.time() + 30), expiry=30)
        pub.send(f"{ST1}/reject", reject(8, deadline=time.time() + 30), expiry=30)
        rec.calls.clear()
        gw2, client2 = _start_gateway(mosquitto, state, rec)
        try:
            _wait(lambda: gw2.stats["duplicate_rejects"] + gw2.stats["diverted"] >= 2)
        finally:
            _stop(client2)
        assert rec.calls == [("st1", "p8", 8, "NG")]
    finally:
        pub.close()


def test_served_gateway_alarms_on_a_station_gone_quiet_through_the_broker(
    mosquitto, tmp_path
) -> None:
    # serve() is what main() runs: paho's thread feeds the gateway, this loop checks silence.
    alarms: list[tuple[str, str | None]] = []
    gw = plc.Gateway(tmp_path / "state.json", alarm=lambda st, why: alarms.append((st, why)))
    client = plc.make_client(
        gw, host=mosquitto.host, port=mosquitto.port, base=f"{BASE}/+", client_id="test-silence"
    )
    stop = threading.Event()
    server = threading.Thread(target=plc.serve, args=(gw, client, stop, 0.05))
    pub = Publisher(mosquitto.host, mosquitto.port)
    server.start()
    try:
        pub.send(f"{ST1}/status", b'{"state": "online", "boot_id": "a"}', retain=True)
        _wait(lambda: gw.status.get(ST1) == "online")
        for _ in range(10):  # a live station (sent faster than its interval): no alarm
            pub.send(f"{ST1}/health", health(0.5))
            time.sleep(0.1)
        assert alarms == []
        _wait(lambda: alarms, timeout=5)  # then nothing: alarmed after 1.5 s
        assert alarms[0][0] == ST1 and alarms[0][1].startswith("SILENT")
        pub.send(f"{ST1}/health", health(0.5))
        _wait(lambda: alarms[-1] == (ST1, None))
    finally:
        stop.set()
        server.join(5)
        pub.close()
    assert not server.is_alive()
