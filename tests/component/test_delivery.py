"""Delivery: outbox -> publisher, against a real mosquitto. The daemon-level outage and crash
tests are in test_outbox_daemon.py; these pin the hand-over between the committing thread and
the feeder, and the socket options that keep a verdict from waiting on TCP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspectd.delivery import Delivery
from inspectd.messages import verdict_messages
from inspectd.mqtt.broker import LocalBroker
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.mqtt.topics import Topics
from inspectd.outbox import Outbox
from inspectd.verdict import Verdict, VerdictRecord

from support.mqtt_client import Subscriber

TOPICS = Topics("t/delivery")


def record(i: int, seq: int = 0) -> VerdictRecord:
    now = time.time()
    return VerdictRecord(
        station="st1",
        product="button",
        part_id=f"P{i:05d}",
        verdict=Verdict.NG if i % 3 == 0 else Verdict.OK,
        score=0.1,
        threshold=0.5,
        model_name="m",
        model_sha256="ab" * 32,
        camera_serial="cam",
        frame_id=i,
        t_capture=now,
        t_verdict=now,
        latency_ms=1.0,
        seq=seq,
    )


@pytest.fixture
def wired(mosquitto: LocalBroker) -> Iterator[tuple[Subscriber, MqttPublisher]]:
    sub = Subscriber(mosquitto.host, mosquitto.port, f"{TOPICS.base}/#")
    pub = MqttPublisher(
        host=mosquitto.host,
        port=mosquitto.port,
        protocol="5",
        client_id=f"test-delivery-{time.monotonic_ns()}",
        keepalive_s=10,
        topics=TOPICS,
        status_fields={},
    )
    pub.start()
    yield sub, pub
    pub.stop(timeout=0.5)
    sub.close()


def verdict_seqs(sub: Subscriber) -> list[int]:
    return [m.json()["seq"] for m in sub.messages(TOPICS.verdict)]


def test_new_verdicts_leave_from_the_committing_thread(tmp_path: Path, wired) -> None:
    """Nothing older is unsent, so record() hands its rows to the publisher itself: they arrive
    although the feeder thread was never started."""
    sub, pub = wired
    delivery = Delivery(Outbox(tmp_path / "outbox.db"), pub, TOPICS, travel_window_s=10)
    delivery.record([record(i) for i in range(1, 4)])
    delivery.record([record(4)])
    sub.wait_for(4, topic=TOPICS.verdict)
    assert verdict_seqs(sub) == [1, 2, 3, 4]
    assert [m.json()["seq"] for m in sub.wait_for(1, topic=TOPICS.reject)] == [3]
    delivery.close()


def test_the_committing_thread_takes_over_once_the_feeder_caught_up(tmp_path: Path, wired) -> None:
    """seq starts above an earlier process's mark, with no rows below it: the feeder's first pass
    finds nothing and records that everything up to the mark is sent. With the feeder stopped
    after that pass, new verdicts still go out."""
    sub, pub = wired
    delivery = Delivery(
        Outbox(tmp_path / "outbox.db", start_after=500), pub, TOPICS, travel_window_s=10
    )
    delivery.start()
    time.sleep(0.5)  # the first pass runs at once; it reads an empty table
    delivery.close()  # stops the feeder
    delivery.record([record(1), record(2)])
    sub.wait_for(2, topic=TOPICS.verdict)
    assert verdict_seqs(sub) == [501, 502]


def test_rows_left_by_an_earlier_process_go_first_and_nothing_twice(tmp_path: Path, wired) -> None:
    """The feeder replays what an earlier process left while new verdicts are committed from
    another thread, with a window of 3 messages: every seq arrives once, in order."""
    sub, pub = wired
    with Outbox(tmp_path / "outbox.db") as earlier:
        for i in range(1, 31):
            earlier.append(Verdict.OK, verdict_messages(TOPICS, record(i, seq=i), 10.0))
        for i in range(1, 31, 4):
            earlier.ack(i, 0)  # some the broker had acknowledged before the crash
    left = [i for i in range(1, 31) if i % 4 != 1]

    outbox = Outbox(tmp_path / "outbox.db")
    delivery = Delivery(outbox, pub, TOPICS, travel_window_s=10, window=3)
    new: list[int] = []

    def produce() -> None:
        for n in range(40):
            batch = [record(100 + n * 2), record(101 + n * 2)]
            delivery.record(batch)
            new.extend(r.seq for r in batch)
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    delivery.start()
    producer.start()
    producer.join()
    assert delivery.drain(20), "the broker did not acknowledge everything"
    delivery.close()
    outbox.close()

    got = verdict_seqs(sub)
    assert got[: len(left)] == left  # the replay first
    assert got == left + new  # then the new ones: in order, none twice, none missing
    assert all(m.json()["replayed"] for m in sub.messages(TOPICS.verdict)[: len(left)])


def test_nagle_is_off_on_the_station_and_the_test_broker(mosquitto: LocalBroker, wired) -> None:
    """With Nagle on, the reject written right after its verdict waited for the broker's delayed
    ACK (docs/performance.md; bench/latency.py shows the end-to-end effect)."""
    _, pub = wired
    deadline = time.monotonic() + 5
    while not pub.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    sock = pub._client.socket()
    assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert "set_tcp_nodelay true" in (mosquitto.workdir / "mosquitto.conf").read_text()
