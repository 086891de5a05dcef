"""MqttPublisher, Topics and the local brokers, against real brokers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from structlog.testing import capture_logs

from inspectd.contract.messages import verdict_messages
from inspectd.contract.topics import Topics
from inspectd.contract.verdict import Region, Verdict, VerdictRecord, iso_utc
from inspectd.mqtt.broker import (
    LocalBroker,
    amqtt_available,
    broker_reachable,
    find_mosquitto,
    free_port,
)
from inspectd.mqtt.publisher import MqttPublisher

from support.mqtt_client import Received, Subscriber
from support.paths import REPO

PROTOCOLS = ["5", "3.1.1"]
V1_KEYS = {
    "schema",
    "seq",
    "station",
    "product",
    "part_id",
    "request_id",
    "verdict",
    "score",
    "threshold",
    "regions",
    "model",
    "camera",
    "t_capture",
    "t_verdict",
    "latency_ms",
    "replayed",
    "durable",
    "late",
    "error",
}
STATUS_FIELDS = {
    "boot_id": "0f0e0d0c-boot",
    "version": "0.1.0",
    "product": "button",
    "model_sha256": "ab" * 32,
}
CYCLE = [Verdict.OK, Verdict.NG, Verdict.OK, Verdict.ERROR]


def publish(pub: MqttPublisher, record: VerdictRecord) -> None:
    """The verdict and, for NG/ERROR, the reject, straight to the publisher (no outbox)."""
    for message in verdict_messages(pub.topics, record, travel_window_s=60.0):
        pub.enqueue(message)


def make_record(seq: int, verdict: Verdict = Verdict.OK) -> VerdictRecord:
    now = time.time()
    return VerdictRecord(
        station="st1",
        product="button",
        part_id=f"P{seq:05d}",
        verdict=verdict,
        score=None if verdict is Verdict.ERROR else 0.1 * seq,
        threshold=0.5,
        model_name="hybrid",
        model_sha256="ab" * 32,
        model_version=1,
        camera_serial="SIM-0001",
        frame_id=seq,
        t_capture=now - 0.05,
        t_verdict=now,
        latency_ms=50.0,
        regions=[Region(1, 2, 3, 4, 12, 0.9)] if verdict is Verdict.NG else [],
        error="camera timeout" if verdict is Verdict.ERROR else None,
        seq=seq,
    )


def cycle_verdict(seq: int) -> Verdict:
    return CYCLE[seq % len(CYCLE)]


def unique_topics(tag: str) -> Topics:
    return Topics(f"inspectd/v1/test/{tag}/st{time.monotonic_ns()}")


def seqs(messages: list[Received]) -> list[int]:
    return [m.json()["seq"] for m in messages]


def first_arrivals(values: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def make_publisher() -> Iterator[Callable[..., MqttPublisher]]:
    made: list[MqttPublisher] = []

    def make(broker_port: int, protocol: str, topics: Topics, **kw: object) -> MqttPublisher:
        pub = MqttPublisher(
            host="127.0.0.1",
            port=broker_port,
            protocol=protocol,
            client_id=f"inspectd-test-{time.monotonic_ns()}",
            keepalive_s=10,
            topics=topics,
            status_fields=STATUS_FIELDS,
            **kw,  # type: ignore[arg-type]
        )
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.stop(timeout=0.5)


@pytest.fixture
def subscribers() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(broker: LocalBroker, topic_filter: str, **kw: object) -> Subscriber:
        kw.setdefault("protocol", broker.protocol)
        sub = Subscriber(broker.host, broker.port, topic_filter, **kw)  # type: ignore[arg-type]
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def check_status(msg: Received, state: str) -> None:
    body = msg.json()
    assert body["state"] == state
    for key, value in STATUS_FIELDS.items():
        assert body[key] == value
    assert body["ts"].endswith("Z")
    datetime.fromisoformat(body["ts"].replace("Z", "+00:00"))


# -- status and Last Will -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_status_online_retained_then_stopped(mosquitto, make_publisher, subscribers, protocol):
    topics = unique_topics("status")
    pub = make_publisher(mosquitto.port, protocol, topics)
    pub.start()
    # a verdict acknowledged means the earlier "online" (same connection, sent first) is stored
    publish(pub, make_record(1))
    assert pub.wait_published(5)
    assert pub.connected

    late = subscribers(mosquitto, topics.status, protocol=protocol)
    (online,) = late.wait_for(1)
    assert online.retain
    check_status(online, "online")
    if protocol == "5":
        assert online.properties.ContentType == "application/json"

    pub.stop(timeout=5)
    assert not pub.connected
    live = late.wait_for(2)
    check_status(live[1], "stopped")

    later = subscribers(mosquitto, topics.status, protocol=protocol)
    (stopped,) = later.wait_for(1)
    assert stopped.retain
    check_status(stopped, "stopped")
    time.sleep(0.3)  # a will sent on the clean disconnect would arrive by now
    assert [m.json()["state"] for m in later.messages()] == ["stopped"]
    assert [m.json()["state"] for m in late.messages()] == ["online", "stopped"]


CHILD = """
import sys, time
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.contract.topics import Topics
pub = MqttPublisher(host="127.0.0.1", port={port}, protocol={protocol!r}, client_id="will-child",
                    keepalive_s=10, topics=Topics({base!r}), status_fields={fields!r})
pub.start()
deadline = time.monotonic() + 10
while not pub.connected and time.monotonic() < deadline:
    time.sleep(0.02)
print("connected" if pub.connected else "not connected", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_last_will_offline_when_killed(mosquitto, subscribers, tmp_path, protocol):
    topics = unique_topics("will")
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(CHILD).format(
            port=mosquitto.port, protocol=protocol, base=topics.base, fields=STATUS_FIELDS
        )
    )
    watcher = subscribers(mosquitto, topics.status, protocol=protocol)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        output = []  # structlog's default output also goes to stdout
        for raw in child.stdout:
            output.append(raw.decode(errors="replace").rstrip())
            if output[-1].endswith("connected"):
                break
        assert output and output[-1] == "connected", "\n".join(output)
        check_status(watcher.wait_for(1)[0], "online")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        child.stdout.close()

    check_status(watcher.wait_for(2)[1], "offline")
    late = subscribers(mosquitto, topics.status, protocol=protocol)
    (offline,) = late.wait_for(1)
    assert offline.retain
    check_status(offline, "offline")


# -- verdicts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fifty_verdicts_in_order_with_rejects(mosquitto, make_publisher, subscribers, protocol):
    topics = unique_topics("verdicts")
    sub = subscribers(mosquitto, f"{topics.base}/#", protocol=protocol)
    pub = make_publisher(mosquitto.port, protocol, topics)
    pub.start()
    records = [make_record(seq, cycle_verdict(seq)) for seq in range(1, 51)]
    for record in records:
        publish(pub, record)
    assert pub.wait_published(10)

    verdicts = sub.wait_for(50, topic=topics.verdict)
    assert seqs(verdicts) == list(range(1, 51))
    for msg, record in zip(verdicts, records, strict=True):
        body = msg.json()
        assert set(body) == V1_KEYS
        assert body == record.to_payload()
        assert not msg.retain
        assert msg.payload == msg.payload.strip() and b", " not in msg.payload  # compact
        if protocol == "5":
            assert msg.properties.ContentType == "application/json"

    bad = [r for r in records if r.verdict in (Verdict.NG, Verdict.ERROR)]
    rejects = sub.wait_for(len(bad), topic=topics.reject)
    time.sleep(0.1)
    rejects = sub.messages(topics.reject)
    assert [m.json() for m in rejects] == [
        {
            "station": "st1",
            "part_id": r.part_id,
            "seq": r.seq,
            "verdict": r.verdict.value,
            "deadline_ts": iso_utc(r.t_verdict + 60.0),
        }
        for r in bad
    ]
    if protocol == "5":  # expiry = what is left of the part's travel window
        assert all(55 <= m.properties.MessageExpiryInterval <= 60 for m in rejects)
    stats = pub.stats()
    assert stats["published"] == 50 + len(bad)
    assert stats["acked"] == stats["published"]
    assert stats["pending"] == 0 and stats["dropped"] == 0


def test_queue_full_logs_error_with_seq(make_publisher):
    pub = make_publisher(free_port(), "5", unique_topics("full"), max_queued=3)  # never started
    with capture_logs() as logs:
        publish(pub, make_record(1, Verdict.NG))  # verdict + reject
        publish(pub, make_record(2, Verdict.NG))  # verdict fits, reject does not
    dropped = [e for e in logs if e["event"] == "mqtt.publish_dropped"]
    assert [(e["label"], e["reason"], e["log_level"]) for e in dropped] == [
        ("seq=2", "queue full", "error")
    ]
    assert pub.stats()["dropped"] == 1 and pub.stats()["pending"] == 3
    assert not pub.wait_published(0.05)


# -- outages ----------------------------------------------------------------------------------


def persistent_mosquitto(port: int | None = None) -> LocalBroker:
    # the broker keeps the test subscriber's session across its restarts (mosquitto.db in workdir)
    return LocalBroker.start_mosquitto(port, extra_conf="persistence true\nmax_queued_messages 0")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_broker_down_at_start(make_publisher, protocol):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    topics = unique_topics("down")
    with persistent_mosquitto() as broker:
        # the subscriber's session exists before the publisher's broker comes up, so nothing
        # depends on who reconnects first
        sub = Subscriber(
            broker.host,
            broker.port,
            f"{topics.base}/#",
            client_id="down-sub",
            protocol="3.1.1",
            persistent=True,
        )
        try:
            broker.stop()
            pub = make_publisher(broker.port, protocol, topics)
            pub.start()
            records = [make_record(seq, cycle_verdict(seq)) for seq in range(1, 31)]
            for record in records:
                publish(pub, record)
            time.sleep(0.2)
            assert not pub.connected
            assert pub.stats()["pending"] == len(records) + 15
            assert not pub.wait_published(0.1)

            broker.restart()
            assert pub.wait_published(8)
            verdicts = sub.wait_for(30, timeout=5, topic=topics.verdict)
            assert seqs(verdicts) == list(range(1, 31))
            bad = [r.seq for r in records if r.verdict is not Verdict.OK]
            assert seqs(sub.wait_for(len(bad), topic=topics.reject)) == bad
            check_status(sub.wait_for(1, topic=topics.status)[0], "online")
            pub.stop(timeout=2)
        finally:
            sub.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_broker_restart_mid_stream_keeps_order(make_publisher, protocol):
    """Publishing continuously across broker restarts: nothing lost, first arrivals in order.
    (Plain paho reorders here: see the publisher's module docstring.)"""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    topics = unique_topics("restart")
    with persistent_mosquitto() as broker:
        sub = Subscriber(
            broker.host,
            broker.port,
            topics.verdict,
            client_id="restart-sub",
            protocol="3.1.1",
            persistent=True,
        )
        try:
            pub = make_publisher(broker.port, protocol, topics)
            pub.start()
            stop = threading.Event()
            count = 0

            def pump() -> None:
                nonlocal count
                while not stop.is_set():
                    count += 1
                    publish(pub, make_record(count))
                    time.sleep(0.0005)

            pumper = threading.Thread(target=pump)
            pumper.start()
            try:
                for _ in range(2):
                    time.sleep(0.3)
                    broker.stop()
                    time.sleep(0.2)
                    broker.restart()
                    wait_until(lambda: pub.connected, 5, "the publisher to reconnect")
                time.sleep(0.3)
            finally:
                stop.set()
                pumper.join()
            assert pub.wait_published(10), pub.stats()
            wanted = set(range(1, count + 1))
            wait_until(lambda: set(seqs(sub.messages())) >= wanted, 10, f"seq 1..{count}")
            got = seqs(sub.messages())  # duplicates (DUP resends) are allowed
            assert first_arrivals(got) == list(range(1, count + 1))
            assert pub.stats()["dropped"] == 0
            pub.stop(timeout=2)
        finally:
            sub.close()


# -- amqtt fallback -------------------------------------------------------------------------------


def test_amqtt_fallback_delivers_verdicts(make_publisher, subscribers):
    if not amqtt_available():
        pytest.skip("amqtt is not installed (extra 'demo')")
    with LocalBroker.start_amqtt() as broker:
        assert broker.protocol == "3.1.1" and broker.kind == "amqtt"
        assert broker_reachable(broker.host, broker.port)
        topics = unique_topics("amqtt")
        sub = subscribers(broker, f"{topics.base}/#")
        pub = make_publisher(broker.port, broker.protocol, topics)
        pub.start()
        for seq in range(1, 11):
            publish(pub, make_record(seq, cycle_verdict(seq)))
        assert pub.wait_published(10)
        assert seqs(sub.wait_for(10, topic=topics.verdict)) == list(range(1, 11))
        pub.stop(timeout=5)
        late = subscribers(broker, topics.status)
        # amqtt 0.12.1 sends a retained message to a new subscriber once per matching
        # subscription on the broker (here twice: `sub` matches too), so do not count them
        for stopped in late.wait_for(1):
            assert stopped.retain
            check_status(stopped, "stopped")
    assert not broker_reachable(broker.host, broker.port, timeout=0.2)


def test_local_broker_restart_and_errors(mosquitto):
    port = mosquitto.port
    mosquitto.kill()
    assert not broker_reachable("127.0.0.1", port, timeout=0.2)
    mosquitto.restart()
    assert broker_reachable("127.0.0.1", port) and mosquitto.port == port
    with pytest.raises(RuntimeError, match="already in use"):
        LocalBroker.start_mosquitto(port)
    with pytest.raises(RuntimeError, match="exited with status") as err:
        LocalBroker.start_mosquitto(extra_conf="no_such_option 1")
    assert "no_such_option" in str(err.value)


# -- topics ---------------------------------------------------------------------------------------


def test_topics():
    t = Topics("inspectd/v1/site/line1/st1")
    assert t.status == "inspectd/v1/site/line1/st1/status"
    assert t.verdict.endswith("/verdict") and t.reject.endswith("/reject")
    assert t.overlay.endswith("/overlay") and t.health.endswith("/health")
    assert t.stats.endswith("/stats") and t.error.endswith("/error")
    assert t.trigger.endswith("/trigger")
    assert t.cmd("product") == "inspectd/v1/site/line1/st1/cmd/product/set"
    assert t.cmd_filter == "inspectd/v1/site/line1/st1/cmd/+/set"
    for bad in ["", "a/+/b", "a/#", "/a", "a/", "a//b", "$SYS/x"]:
        with pytest.raises(ValueError):
            Topics(bad)
    for bad in ["", "a/b", "+", "#"]:
        with pytest.raises(ValueError):
            t.cmd(bad)
