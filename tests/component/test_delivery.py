"""Delivery: outbox -> publisher, against a real mosquitto. The daemon-level outage and crash
tests are in test_outbox_daemon.py; these pin the hand-over between the committing thread and
the feeder, the socket options that keep a verdict from waiting on TCP, what a refused PUBACK
does (mosquitto's ACL for 0x87; a stand-in broker for the codes mosquitto never sends) and what
a damaged row does (quarantined; the rows after it go out)."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspectd.contract.messages import verdict_messages
from inspectd.contract.topics import Topics
from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.delivery import Delivery
from inspectd.mqtt.broker import LocalBroker
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.outbox import Outbox

from support.mqtt_client import Subscriber
from support.puback_broker import PubackBroker
from support.secure_broker import set_acl, start_acl_mosquitto
from support.station import first_arrivals
from support.waiting import wait_until

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
        model_version=1,
        camera_serial="cam",
        frame_id=i,
        t_capture=now,
        t_verdict=now,
        latency_ms=1.0,
        seq=seq,
    )


def started_publisher(host: str, port: int) -> MqttPublisher:
    pub = MqttPublisher(
        host=host,
        port=port,
        protocol="5",
        client_id=f"test-delivery-{time.monotonic_ns()}",
        keepalive_s=10,
        topics=TOPICS,
        status_fields={},
    )
    pub.start()
    return pub


@pytest.fixture
def wired(mosquitto: LocalBroker) -> Iterator[tuple[Subscriber, MqttPublisher]]:
    sub = Subscriber(mosquitto.host, mosquitto.port, f"{TOPICS.base}/#")
    pub = started_publisher(mosquitto.host, mosquitto.port)
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


# -- refused PUBACKs (issue 31, item 1) ------------------------------------------------------------

# mosquitto's ACL: the station may publish anything but its verdicts and rejects (status goes out)
DENY_VERDICTS = f"topic readwrite #\ntopic deny {TOPICS.verdict}\ntopic deny {TOPICS.reject}\n"
ALLOW_ALL = "topic readwrite #\n"


def test_verdicts_the_acl_refuses_stay_in_the_outbox_and_arrive_once_it_allows_them(
    tmp_path: Path,
) -> None:
    """mosquitto answers 0x87 (Not authorized) for the verdicts and rejects: every row of the 40
    stays (the newer ones wait behind the refused), delivery says why (topic and code), and
    after the ACL is fixed (SIGHUP reloads it, the connection stays up) all of them arrive, in
    seq order."""
    acl = tmp_path / "acl"
    with (
        start_acl_mosquitto(acl, DENY_VERDICTS) as broker,
        Subscriber(broker.host, broker.port, f"{TOPICS.base}/#") as sub,
    ):
        pub = started_publisher(broker.host, broker.port)
        outbox = Outbox(tmp_path / "outbox.db")
        delivery = Delivery(outbox, pub, TOPICS, travel_window_s=120)
        delivery.start()
        try:
            for i in range(1, 41, 4):
                delivery.record([record(n) for n in range(i, i + 4)])
            ngs = [n for n in range(1, 41) if n % 3 == 0]
            wait_until(lambda: pub.stats()["refused"] >= 1, 20, "a refusal")
            delivery.drain(0.5)  # what the feeder does with the answers, done by now
            assert outbox.stats()["depth"] == 40  # nothing deleted
            assert sub.messages(TOPICS.verdict) == []
            refused = [p for p in delivery.problems() if p.startswith("mqtt_refused")]
            assert len(refused) == 1, delivery.problems()
            assert TOPICS.verdict in refused[0] and "0x87" in refused[0], refused
            assert "Not authorized" in refused[0]

            set_acl(broker, acl, ALLOW_ALL)
            sub.wait_for(40, timeout=30, topic=TOPICS.verdict)
            assert delivery.drain(10)
        finally:
            delivery.close()
            pub.stop(timeout=0.5)
            outbox.close()
        verdicts = first_arrivals(sub.messages(TOPICS.verdict))
        assert [v["seq"] for v in verdicts] == list(range(1, 41))  # in order, none missing
        assert sorted({m.json()["seq"] for m in sub.messages(TOPICS.reject)}) == ngs
        assert delivery.problems() == []


# Every failure code MQTT 5 allows on a PUBACK, and what the station does with it: "retry" holds
# the verdicts (in order, with backoff); "park" sets that one verdict aside (the payload or topic
# of that message is the problem) and lets the rest go, retrying it on the next connection.
REFUSAL_CODES = {
    0x80: "retry",  # Unspecified error
    0x83: "retry",  # Implementation specific error
    0x87: "retry",  # Not authorized
    0x90: "park",  # Topic Name invalid
    0x91: "retry",  # Packet Identifier in use
    0x97: "retry",  # Quota exceeded
    0x99: "park",  # Payload format invalid
}


@pytest.mark.parametrize("code", sorted(REFUSAL_CODES), ids=lambda c: f"0x{c:02x}")
def test_no_puback_failure_code_deletes_the_verdict(tmp_path: Path, code: int) -> None:
    with PubackBroker(code) as broker:
        pub = started_publisher(broker.host, broker.port)
        outbox = Outbox(tmp_path / "outbox.db")
        delivery = Delivery(outbox, pub, TOPICS, travel_window_s=120)
        delivery.start()
        try:
            delivery.record([record(1)])  # OK: one message, the verdict
            broker.wait_for(lambda got: any(p.topic == TOPICS.verdict for p in got))
            wait_until(lambda: pub.stats()["refused"] >= 1, 5, "the refusal")
            delivery.drain(0.5)
            assert outbox.stats()["depth"] == 1  # kept
            assert any(f"0x{code:02x}" in p for p in delivery.problems()), delivery.problems()

            broker.code = 0x00
            delivery.record([record(2)])
            if REFUSAL_CODES[code] == "park":
                # set aside, counted; the next verdict is not held back by it
                broker.wait_for(lambda got: verdicts_accepted(got) == [2])
                delivery.drain(0.5)
                assert outbox.stats()["quarantined"] == 1 and outbox.stats()["depth"] == 1
                broker.drop_clients()  # the station reconnects: parked rows are tried again
            accepted = broker.wait_for(lambda got: len(verdicts_accepted(got)) == 2, 15)
            # not drain(): it does not wait for quarantined rows, and the parked one's PUBACK
            # may still be on its way when the broker has logged the PUBLISH
            wait_until(lambda: outbox.stats()["depth"] == 0, 5, "every row acknowledged")
        finally:
            delivery.close()
            pub.stop(timeout=0.5)
            outbox.close()
    # held verdicts keep their order; a parked one comes after the verdicts it let pass
    expected = [1, 2] if REFUSAL_CODES[code] == "retry" else [2, 1]
    assert verdicts_accepted(accepted) == expected
    assert delivery.problems() == []


def test_no_matching_subscribers_is_an_acknowledgement(tmp_path: Path) -> None:
    """0x10 is a success code: the broker took the message, nobody subscribed."""
    with PubackBroker(0x10) as broker:
        pub = started_publisher(broker.host, broker.port)
        outbox = Outbox(tmp_path / "outbox.db")
        delivery = Delivery(outbox, pub, TOPICS, travel_window_s=120)
        delivery.start()
        try:
            delivery.record([record(1), record(2)])
            assert delivery.drain(5)
            time.sleep(1.5)  # a retry would come after 1 s
        finally:
            delivery.close()
            pub.stop(timeout=0.5)
            outbox.close()
        assert [p.topic for p in broker.received()].count(TOPICS.verdict) == 2
        assert pub.stats()["refused"] == 0 and delivery.problems() == []


def verdicts_accepted(received: list) -> list[int]:
    return [
        json.loads(p.payload)["seq"]
        for p in received
        if p.topic == TOPICS.verdict and p.code < 0x80
    ]


# -- damaged rows (issue 31, item 3) ---------------------------------------------------------------


def damage(path: Path, statements: list[str]) -> None:
    """Change stored rows behind the outbox's back (CHECK constraints off, as a disk, a tool or
    an older version might have written them)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        for statement in statements:
            assert conn.execute(statement).rowcount == 1, statement
        conn.commit()
    finally:
        conn.close()


def test_damaged_rows_are_quarantined_and_the_rows_after_them_delivered(
    tmp_path: Path, wired
) -> None:
    """Three rows an earlier process left are damaged: a kind that is no verdict, a QoS MQTT
    does not have, a payload stored as text (the replayed flag cannot be set in it). Each is set
    aside, counted and kept on disk; the 7 others and the new verdicts arrive, in order, also
    after a restart."""
    sub, pub = wired
    path = tmp_path / "outbox.db"
    with Outbox(path) as earlier:
        for i in range(1, 11):
            r = record(i, seq=i)
            earlier.append(r.verdict, verdict_messages(TOPICS, r, 120.0))
    damage(
        path,
        [
            "UPDATE verdicts SET kind = 'MAYBE' WHERE seq = 3",
            "UPDATE messages SET qos = 7 WHERE seq = 5 AND idx = 0",
            "UPDATE messages SET payload = CAST(payload AS TEXT) WHERE seq = 7 AND idx = 0",
        ],
    )
    bad = [3, 5, 7]

    outbox = Outbox(path)
    delivery = Delivery(outbox, pub, TOPICS, travel_window_s=120)
    delivery.start()
    try:
        delivery.record([record(11), record(12)])
        sub.wait_for(9, topic=TOPICS.verdict)
        assert delivery.drain(5)  # the quarantined three do not hold a drain back
        stats = outbox.stats()
        assert stats["quarantined"] == 3 and stats["depth"] == 3, stats
        problems = [p for p in delivery.problems() if p.startswith("outbox_quarantined")]
        assert len(problems) == 1 and "3 verdicts" in problems[0], delivery.problems()
    finally:
        delivery.close()
        outbox.close()
    assert verdict_seqs(sub) == [1, 2, 4, 6, 8, 9, 10, 11, 12]

    # kept on disk with the reason, and set aside again by the next process
    conn = sqlite3.connect(path)
    kept = conn.execute("SELECT seq, quarantined FROM verdicts ORDER BY seq").fetchall()
    conn.close()
    assert [s for s, _ in kept] == bad and all(reason for _, reason in kept), kept
    outbox = Outbox(path)
    delivery = Delivery(outbox, pub, TOPICS, travel_window_s=120)
    delivery.start()
    try:
        delivery.record([record(13)])
        sub.wait_for(10, topic=TOPICS.verdict)
        assert outbox.stats()["quarantined"] == 3
    finally:
        delivery.close()
        outbox.close()
    assert verdict_seqs(sub)[9:] == [13]
