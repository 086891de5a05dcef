"""Ages and deadlines on the monotonic clock (issue 15, bug 3): after the wall clock stepped
+2 h during an outage, rejects inside their travel window were dropped as expired and outbox
rows were dropped for max_age; after a -3 h step, rejects went out with 3 h of message expiry.
The machine's clock is never touched: the outbox takes a ``Clock`` whose wall time jumps, the
publisher is given records stamped before a step, and the daemon runs with its ``time.time``
shifted through a file (sitecustomize on its PYTHONPATH)."""

from __future__ import annotations

import math
import struct
import time
from datetime import datetime
from pathlib import Path

import pytest

from inspectd.clock import Clock
from inspectd.contract.messages import OutgoingMessage
from inspectd.contract.topics import Topics
from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.delivery import Delivery
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.outbox import Outbox

from support.mqtt_client import Subscriber

HOUR = 3600.0


class SteppedClock:
    """A wall clock an offset away from a monotonic one that the test moves by hand."""

    def __init__(self, boot_id: str = "boot-a") -> None:
        self.t = 1000.0  # "seconds since boot"
        self.offset = 1.7e9  # wall = monotonic + offset; a step changes the offset only
        self.boot_id = boot_id

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.t + self.offset, mono=lambda: self.t, boot_id=self.boot_id)


def reject(clock: Clock, window: float) -> list[OutgoingMessage]:
    return [
        OutgoingMessage("t/verdict", b"{}"),
        OutgoingMessage(
            "t/reject", b"{}", expires=clock.wall() + window, expires_mono=clock.mono() + window
        ),
    ]


def test_outbox_ages_ignore_wall_clock_steps(tmp_path: Path) -> None:
    fake = SteppedClock()
    with Outbox(tmp_path / "o.db", max_age_s=HOUR, clock=fake.clock()) as outbox:
        first = outbox.append("NG", reject(outbox.clock, 10))
        fake.offset += 2 * HOUR  # NTP after an outage: +2 h
        second = outbox.append("OK", [OutgoingMessage("t/verdict", b"{}")])
        assert outbox.prune() == 0
        assert [r.seq for r in outbox.pending()] == [first, second]  # nothing dropped for age
        fake.offset -= 5 * HOUR  # and back, -3 h from the start
        assert outbox.stats()["oldest_age_s"] == 0.0  # not -3 h, not +2 h
        fake.t += 30 * 60
        assert outbox.stats()["oldest_age_s"] == 30 * 60
        fake.t += 30 * 60 + 1  # an hour on the monotonic clock: now the age bound applies
        assert outbox.prune() == 2
        assert outbox.stats()["dropped"] == {"OK": 1, "NG": 1, "ERROR": 0}


def test_a_restart_in_the_same_boot_keeps_monotonic_ages_and_deadlines(tmp_path: Path) -> None:
    fake = SteppedClock()
    with Outbox(tmp_path / "o.db", max_age_s=HOUR, clock=fake.clock()) as outbox:
        outbox.append("NG", reject(outbox.clock, 10))
    fake.t += 4
    fake.offset += 2 * HOUR  # the clock stepped while the daemon was down
    with Outbox(tmp_path / "o.db", max_age_s=HOUR, clock=fake.clock()) as outbox:
        (row,) = outbox.pending()
        assert row.created_mono == 1000.0
        assert outbox.stats()["oldest_age_s"] == 4
        assert row.messages[1].expires_mono == 1010.0  # 6 s of its window left


def test_after_a_reboot_ages_come_from_the_wall_clock_clamped(tmp_path: Path) -> None:
    fake = SteppedClock("boot-a")
    with Outbox(tmp_path / "o.db", max_age_s=HOUR, clock=fake.clock()) as outbox:
        outbox.append("NG", reject(outbox.clock, 60))  # wall W, window 60 s
    # A reboot: a new boot id, the monotonic clock starts again (20 s since boot) and the wall
    # clock says 30 s went by.
    fake.boot_id, fake.t, fake.offset = "boot-b", 20.0, fake.offset + 1000.0 - 20.0 + 30.0
    with Outbox(tmp_path / "o.db", max_age_s=HOUR, clock=fake.clock()) as outbox:
        (row,) = outbox.pending()
        assert outbox.stats()["oldest_age_s"] == pytest.approx(30.0)
        assert row.messages[1].expires_mono == pytest.approx(20.0 + 30.0)  # 30 of 60 s left
    # Another reboot with the wall clock set back 2 h: not younger than the boot (25 s).
    fake.boot_id, fake.t, fake.offset = "boot-c", 25.0, fake.offset - 2 * HOUR
    with Outbox(tmp_path / "o.db", max_age_s=HOUR, clock=fake.clock()) as outbox:
        (row,) = outbox.pending()
        assert outbox.stats()["oldest_age_s"] == pytest.approx(25.0)
        assert row.messages[1].expires_mono == pytest.approx(25.0 + 60.0 - 25.0)


def test_an_outbox_file_from_before_the_monotonic_columns_opens_and_ages_by_wall(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "o.db"
    conn = sqlite3.connect(path)  # what schema version 1 wrote
    conn.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE verdicts (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, created REAL NOT NULL,
                               replayed INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE messages (seq INTEGER NOT NULL, idx INTEGER NOT NULL, topic TEXT NOT NULL,
            payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
            content_type TEXT, expires REAL, PRIMARY KEY (seq, idx)) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema_version', 1), ('reserved_seq', 7);
    """)
    now = time.time()
    conn.execute("INSERT INTO verdicts VALUES (7, 'NG', ?, 0)", (now - 5,))
    conn.execute(
        "INSERT INTO messages VALUES (7, 0, 't/reject', x'7b7d', 1, 0, NULL, ?)", (now + 5,)
    )
    conn.commit()
    conn.close()
    with Outbox(path) as outbox:
        (row,) = outbox.pending()
        left = row.messages[0].expires_mono - time.monotonic()
        assert 0 < left <= 10.5  # 10 s window, 5 s of it left by the wall clock
        assert 4 <= outbox.stats()["oldest_age_s"] < 60
        assert outbox.append("OK", []) == 8


# -- through the real publisher and broker ------------------------------------------------------

TOPICS = Topics("t/clock")


def record(i: int, wall_shift: float) -> VerdictRecord:
    """An NG verdict decided now, stamped by a wall clock ``wall_shift`` away from today's."""
    wall = time.time() + wall_shift
    return VerdictRecord(
        station="st1",
        product="button",
        part_id=f"P{i}",
        verdict=Verdict.NG,
        score=0.9,
        threshold=0.5,
        model_name="m",
        model_sha256="ab" * 32,
        model_version=1,
        camera_serial="cam",
        frame_id=i,
        t_capture=wall,
        t_verdict=wall,
        latency_ms=1.0,
        t_mono=time.monotonic(),
    )


@pytest.mark.parametrize("step_h", [2.0, -3.0])
def test_reject_expiry_follows_the_travel_window_whatever_the_wall_clock_did(
    mosquitto, tmp_path: Path, step_h: float
) -> None:
    # Verdicts recorded, then the wall clock steps by step_h before they reach the publisher:
    # the same as recording them with a wall clock -step_h away from the publisher's.
    window = 10.0
    sub = Subscriber(mosquitto.host, mosquitto.port, f"{TOPICS.base}/#")
    pub = MqttPublisher(
        host=mosquitto.host,
        port=mosquitto.port,
        protocol="5",
        client_id=f"test-clock-{time.monotonic_ns()}",
        keepalive_s=10,
        topics=TOPICS,
        status_fields={},
    )
    delivery = Delivery(Outbox(tmp_path / "o.db"), pub, TOPICS, travel_window_s=window)
    try:
        delivery.record([record(i, -step_h * HOUR) for i in range(1, 4)])
        pub.start()
        rejects = sub.wait_for(3, timeout=10, topic=TOPICS.reject)
        assert [m.json()["seq"] for m in rejects] == [1, 2, 3]
        for m in rejects:
            assert 1 <= m.properties.MessageExpiryInterval <= math.ceil(window)
        assert pub.stats()["expired"] == 0
    finally:
        pub.stop(timeout=0.5)
        delivery.outbox.close()
        sub.close()


# -- the daemon, with its wall clock stepped during an outage ------------------------------------

from support.daemon_process import Daemon  # noqa: E402
from support.paths import needs_bundle  # noqa: E402
from support.station import (  # noqa: E402
    BASE,
    PERSISTENT,
    VERDICT,
    first_arrivals,
    jsonl,
    station_config,
    write_parts,
)
from support.waiting import wait_until  # noqa: E402

# Loaded by the daemon's interpreter at start (sitecustomize on its PYTHONPATH): time.time()
# is the real wall clock plus the double in the file, which the test rewrites to step it.
SHIFTED_WALL = """
import mmap, os, struct, time
_f = open(os.environ["TEST_WALL_OFFSET_FILE"], "r+b")
_m = mmap.mmap(_f.fileno(), 8)
_real = time.time
time.time = lambda: _real() + struct.unpack_from("d", _m)[0]
"""


@needs_bundle
def test_daemon_wall_clock_steps_during_an_outage_expire_nothing_and_drop_nothing(
    pngs, tmp_path: Path
) -> None:
    from inspectd.mqtt.broker import LocalBroker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    kinds = ["crack" if i % 4 == 1 else "good" for i in range(100)]
    parts = write_parts(tmp_path / "frames", kinds, pngs)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SHIFTED_WALL)
    offset_file = tmp_path / "wall_offset"
    offset_file.write_bytes(struct.pack("d", 0.0))

    def step_to(seconds: float) -> None:
        with open(offset_file, "r+b") as f:  # the daemon's mapping sees the same page
            f.write(struct.pack("d", seconds))

    window = 60.0  # covers the outage and paho's reconnect backoff: nothing really expires
    with LocalBroker.start_mosquitto(extra_conf=PERSISTENT) as broker:
        config = station_config(
            tmp_path,
            port=broker.port,
            camera={"rate_hz": 20},
            outbox={"max_age_s": HOUR},
            mqtt={"overlays": "none", "travel_window_s": window, "drain_timeout_s": 30},
        )
        env = {"PYTHONPATH": str(site), "TEST_WALL_OFFSET_FILE": str(offset_file)}
        with (
            Subscriber(
                broker.host, broker.port, f"{BASE}/#", client_id="clock-sub", persistent=True
            ) as sub,
            Daemon(config, env=env) as daemon,
        ):
            sub.wait_for(10, timeout=30, topic=VERDICT)
            broker.stop()
            for offset in (0.0, 2 * HOUR, -HOUR):  # as it was, then +2 h, then -3 h
                step_to(offset)
                n = len(jsonl(tmp_path))
                wait_until(lambda n=n: len(jsonl(tmp_path)) >= n + 12, 20, "12 parts recorded")
            assert len(jsonl(tmp_path)) < 100, "the parts ran out during the outage"
            broker.restart()
            assert daemon.wait(90) == 0, daemon.tail()
            wait_until(
                lambda: len({m.json()["seq"] for m in sub.messages(VERDICT)}) >= 100,
                30,
                "100 verdicts",
            )
            time.sleep(0.3)
            verdicts = first_arrivals(sub.messages(VERDICT))
            rejects = sub.messages(f"{BASE}/reject")

    assert [v["part_id"] for v in verdicts] == parts
    assert [v["seq"] for v in verdicts] == list(range(1, 101))
    shifts = [datetime.fromisoformat(v["t_verdict"]).timestamp() - time.time() for v in verdicts]
    assert max(shifts) > 1.9 * HOUR and min(shifts) < -0.9 * HOUR  # the steps reached it
    assert daemon.events("outbox.dropped") == []  # +2 h aged the rows before the step by 2 h
    assert daemon.events("mqtt.expired_not_sent") == []
    ng = {v["seq"] for v in verdicts if v["verdict"] != "OK"}
    assert len(ng) >= 20 and {m.json()["seq"] for m in rejects} == ng  # every reject went out
    expiry = [m.properties.MessageExpiryInterval for m in rejects]
    assert max(expiry) <= window, sorted(expiry)[-5:]  # -3 h made it 10 800 s more
