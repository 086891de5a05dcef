"""The outbox end to end: `inspectd run` as a child process against real mosquitto brokers.

Broker outages, kill -9 of the daemon, a full outbox, an outbox that cannot be written, and the
Last Will. Every broker is a private mosquitto on a free loopback port. The daemon's log (JSON
lines, written to stderr) and its stdout go to files: a pipe nobody reads could fill and stall it.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspectd.mqtt.broker import LocalBroker, find_mosquitto, free_port
from inspectd.outbox import SEQ_RESERVE

from support.daemon_process import Daemon
from support.mqtt_client import Subscriber
from support.paths import needs_bundle
from support.station import (
    BASE,
    PERSISTENT,
    STATUS,
    VERDICT,
    first_arrivals,
    jsonl,
    station_config,
    write_parts,
)
from support.waiting import wait_until

# No overlay JPEGs on …/overlay: these tests are about the verdicts.
QUIET = {"overlays": "none"}

pytestmark = needs_bundle


# -- the daemon ---------------------------------------------------------------------------------


def health(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "state" / "health.json").read_text())


def outbox_rows(state: Path) -> tuple[list[tuple[int, str]], list[int]]:
    """(seq, kind) of every verdict row in state/outbox.db, and the seqs whose …/verdict message
    is still there (not acknowledged), both in seq order. The daemon must not be running."""
    conn = sqlite3.connect(state / "outbox.db")
    try:
        rows = conn.execute("SELECT seq, kind FROM verdicts ORDER BY seq").fetchall()
        verdicts = conn.execute(
            "SELECT seq FROM messages WHERE topic = ? ORDER BY seq", (VERDICT,)
        ).fetchall()
    finally:
        conn.close()
    return [(int(s), str(k)) for s, k in rows], [int(s) for (s,) in verdicts]


@pytest.fixture
def persistent_broker() -> Iterator[LocalBroker]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with LocalBroker.start_mosquitto(extra_conf=PERSISTENT) as broker:
        yield broker


# -- 1. broker outage ---------------------------------------------------------------------------


def test_broker_outage_mid_stream_delivers_all_500_verdicts_in_order(
    persistent_broker, pngs, tmp_path
):
    kinds = ["crack" if i % 25 == 7 else "empty" if i % 40 == 13 else "good" for i in range(500)]
    parts = write_parts(tmp_path / "frames", kinds, pngs)
    broker = persistent_broker
    # 50 parts/s: the stream lasts ~10 s; the broker goes away after ~1 s of it for 3 s, and
    # paho's backoff (1, 2, 4 s) brings the daemon back ~7 s after the outage began: the outbox
    # holds a backlog of hundreds while parts keep coming, and the stream goes on afterwards.
    config = station_config(
        tmp_path, port=broker.port, camera={"rate_hz": 50}, mqtt={**QUIET, "drain_timeout_s": 30}
    )
    # Why nothing depends on who reconnects first after the restart: the subscriber's session
    # is persistent (fixed client id, no clean start) and so is the broker (PERSISTENT), so
    # its subscription, and the messages queued for it, survive the broker's restart; whatever
    # the daemon publishes after the restart is queued for the subscriber even if the daemon's
    # reconnect beats the subscriber's (both clients reconnect on their own).
    with (
        Subscriber(
            broker.host, broker.port, VERDICT, client_id="outage-sub", persistent=True
        ) as sub,
        Daemon(config) as daemon,
    ):
        sub.wait_for(50, timeout=30)
        broker.stop()
        down_at, recorded_at_stop = time.monotonic(), len(jsonl(tmp_path))
        wait_until(
            lambda: (
                time.monotonic() - down_at >= 3 and len(jsonl(tmp_path)) >= recorded_at_stop + 100
            ),
            20,
            "3 s of outage with 100 parts inspected during it",
        )
        assert daemon.running, daemon.tail()
        inspected_during_outage = len(jsonl(tmp_path)) - recorded_at_stop
        assert len(jsonl(tmp_path)) < 500, "the stream ended during the outage: no new parts after"
        broker.restart()  # same port, same mosquitto.db

        assert daemon.wait(60) == 0, daemon.tail()  # all 500 inspected, the outbox drained
        wait_until(
            lambda: len({m.json()["seq"] for m in sub.messages()}) >= 500,
            30,
            "500 distinct verdicts at the subscriber",
        )
        time.sleep(0.3)  # anything that would come after the 500th
        received = sub.messages()

    verdicts = first_arrivals(received)
    assert [v["seq"] for v in verdicts] == list(range(1, 501))  # in order, no gap, none extra
    assert [v["part_id"] for v in verdicts] == parts
    assert verdicts == jsonl(tmp_path)  # the very payloads the daemon recorded
    assert all(v["replayed"] is False and v["durable"] is True for v in verdicts)
    by_kind = {v["part_id"]: v["verdict"] for v in verdicts}
    assert all(by_kind[p] == "ERROR" for p in parts if p.endswith("_empty"))
    assert inspected_during_outage >= 100

    # the daemon saw the outage and came back, and nothing is left in its outbox
    assert len(daemon.events("mqtt.connected")) >= 2
    assert daemon.events("mqtt.disconnected") or daemon.events("mqtt.connect_lost")
    assert outbox_rows(tmp_path / "state") == ([], [])


# -- 2. kill -9 -----------------------------------------------------------------------------------


def test_kill_9_replays_unacknowledged_verdicts_then_continues_above_every_seq(
    persistent_broker, pngs, tmp_path
):
    broker = persistent_broker
    kinds = ["crack" if i % 9 == 4 else "empty" if i % 23 == 11 else "good" for i in range(400)]
    first = write_parts(tmp_path / "frames1", kinds, pngs, prefix="a")
    second = write_parts(tmp_path / "frames2", ["good", "crack", "good"] * 10, pngs, prefix="b")
    config1 = station_config(
        tmp_path,
        port=broker.port,
        name="run1.yaml",
        camera={"path": tmp_path / "frames1", "rate_hz": 50},
        mqtt=QUIET,
    )
    # the second run: the same station and state_dir, new parts, as fast as they come
    config2 = station_config(
        tmp_path,
        port=broker.port,
        name="run2.yaml",
        camera={"path": tmp_path / "frames2"},
        mqtt=QUIET,
    )

    # The subscriber's session persists across the broker restart (see the outage test), so
    # verdicts the broker acknowledged just before it stopped reach it afterwards.
    with Subscriber(
        broker.host, broker.port, VERDICT, client_id="kill9-sub", persistent=True
    ) as sub:
        with Daemon(config1, "run1") as run1:
            sub.wait_for(40, timeout=30)
            # Broker down: nothing is acknowledged from here on, so rows pile up unacknowledged.
            broker.stop()
            recorded_at_stop = len(jsonl(tmp_path))
            wait_until(
                lambda: len(jsonl(tmp_path)) >= recorded_at_stop + 60,
                20,
                "60 parts inspected while the broker is down",
            )
            run1.signal(signal.SIGKILL)
            assert run1.wait(10) == -signal.SIGKILL
        recorded1 = jsonl(tmp_path)
        rows, unacked = outbox_rows(tmp_path / "state")
        last1 = rows[-1][0]  # every seq up to here was committed by run 1
        assert len(unacked) >= 60
        assert unacked == list(range(unacked[0], last1 + 1)), "acks come in order: a tail is left"
        assert recorded1[-1]["seq"] <= last1

        broker.restart()
        with Daemon(config2, "run2") as run2:
            assert run2.wait(60) == 0, run2.tail()
        wanted_new = set(second)
        wait_until(
            lambda: (
                {m.json()["part_id"] for m in sub.messages()} >= wanted_new
                and {m.json()["seq"] for m in sub.messages() if m.json()["replayed"]}
                >= set(unacked)
            ),
            20,
            "the replayed and the new verdicts",
        )
        time.sleep(0.3)
        received = [m.json() for m in sub.messages()]

    # Run 2 logs the replay; the replayed verdicts are exactly the unacknowledged ones, in
    # order, flagged, and identical to what run 1 stored.
    (replaying,) = run2.events("outbox.replaying")
    assert replaying["count"] == len(rows)
    replayed = first_arrivals([m for m in sub.messages() if m.json()["replayed"]])
    assert [v["seq"] for v in replayed] == unacked
    recorded_by_seq = {v["seq"]: v for v in recorded1}
    for v in replayed:
        assert v["part_id"] == first[v["seq"] - 1] and v["durable"] is True
        if v["seq"] in recorded_by_seq:  # run 1 may have died before writing its line
            assert v == {**recorded_by_seq[v["seq"]], "replayed": True}

    # New verdicts come after the replay, with seqs above every seq run 1 handed out (a jump
    # of at most SEQ_RESERVE after a crash), consecutive among themselves.
    new = first_arrivals([m for m in sub.messages() if m.json()["part_id"] in wanted_new])
    assert [v["part_id"] for v in new] == second
    new_seqs = [v["seq"] for v in new]
    assert new_seqs == list(range(new_seqs[0], new_seqs[0] + len(second)))
    assert last1 < new_seqs[0] <= last1 + SEQ_RESERVE + 1
    assert all(v["replayed"] is False for v in new)
    last_replayed = max(i for i, v in enumerate(received) if v["replayed"])
    first_new = min(i for i, v in enumerate(received) if v["part_id"] in wanted_new)
    assert last_replayed < first_new

    # Every part run 1 inspected has its verdict at least once across both runs, under the
    # seq it was given, and no seq of run 1 was used for anything else.
    run1_seqs = {v["seq"]: v["part_id"] for v in received if v["part_id"] not in wanted_new}
    assert set(run1_seqs) == set(range(1, last1 + 1))
    assert all(run1_seqs[seq] == first[seq - 1] for seq in run1_seqs)
    assert {v["part_id"] for v in recorded1} <= set(run1_seqs.values())
    assert outbox_rows(tmp_path / "state") == ([], [])  # run 2 delivered everything


# -- 3. outbox full -------------------------------------------------------------------------------


def run_without_broker(tmp_path: Path, kinds: list[str], pngs, max_rows: int) -> Daemon:
    """All parts inspected with no broker listening: every verdict stays in the outbox."""
    write_parts(tmp_path / "frames", kinds, pngs)
    # nothing listens on a free port; 50 parts/s keeps the sink from batching much
    config = station_config(
        tmp_path,
        port=free_port(),
        camera={"rate_hz": 50},
        mqtt={**QUIET, "drain_timeout_s": 0.5},
        outbox={"max_rows": max_rows},
    )
    with Daemon(config) as daemon:
        assert daemon.wait(60) == 0, daemon.tail()
    return daemon


def drops(daemon: Daemon) -> list[tuple[str, str, int]]:
    """(kind, level, seq) of every dropped verdict, in log order; every seq is listed."""
    out = []
    for entry in daemon.events("outbox.dropped"):
        assert entry["reason"] == "max_rows" and entry["count"] == len(entry["seqs"]), entry
        out += [(entry["kind"], entry["level"], seq) for seq in entry["seqs"]]
    return out


def test_full_outbox_drops_oldest_ok_and_keeps_every_ng_and_error(pngs, tmp_path):
    kinds = ["empty" if i % 8 == 3 else "crack" if i % 8 == 6 else "good" for i in range(60)]
    daemon = run_without_broker(tmp_path, kinds, pngs, max_rows=20)

    recorded = jsonl(tmp_path)
    assert [v["seq"] for v in recorded] == list(range(1, 61))
    kind_of = {v["seq"]: v["verdict"] for v in recorded}
    ok = [s for s in kind_of if kind_of[s] == "OK"]
    bad = [s for s in kind_of if kind_of[s] != "OK"]
    assert {kind_of[s] for s in bad} == {"NG", "ERROR"} and len(bad) < 20  # OK rows suffice

    # The bound holds; every NG and ERROR is still there, with the newest OK verdicts.
    rows, _ = outbox_rows(tmp_path / "state")
    assert len(rows) == 20
    assert [s for s, _ in rows] == sorted(bad + ok[len(ok) - (20 - len(bad)) :])
    assert all(kind == kind_of[s] for s, kind in rows)

    # Only OK verdicts were dropped, oldest first, each logged (warning level) with its seq.
    dropped = drops(daemon)
    assert dropped == [("OK", "warning", s) for s in ok[: 60 - 20]]

    state = health(tmp_path)
    assert state["state"] == "degraded"
    assert state["outbox"]["depth"] == 20
    assert state["outbox"]["dropped"] == {"OK": 40, "NG": 0, "ERROR": 0}
    assert any(p.startswith("outbox_dropped: 40 ") for p in state["problems"]), state["problems"]


def test_full_outbox_drops_ng_and_error_only_when_no_ok_is_left_and_says_so(pngs, tmp_path):
    kinds = ["good"] * 10 + ["empty", "crack"] * 15
    daemon = run_without_broker(tmp_path, kinds, pngs, max_rows=20)

    recorded = jsonl(tmp_path)
    assert [v["seq"] for v in recorded] == list(range(1, 41))
    kind_of = {v["seq"]: v["verdict"] for v in recorded}
    assert [kind_of[s] for s in range(1, 11)] == ["OK"] * 10, "good renders no longer OK"
    assert [kind_of[s] for s in range(11, 41)] == ["ERROR", "NG"] * 15, "cracks no longer NG"

    # 40 verdicts, room for 20: the 10 OK go first, then the 10 oldest NG/ERROR, at error level
    # with their seqs (an NG or ERROR lost can let a bad part through).
    dropped = drops(daemon)
    assert dropped[:10] == [("OK", "warning", s) for s in range(1, 11)]
    assert dropped[10:] == [(kind_of[s], "error", s) for s in range(11, 21)]
    rows, _ = outbox_rows(tmp_path / "state")
    assert [s for s, _ in rows] == list(range(21, 41))

    state = health(tmp_path)
    assert state["outbox"]["depth"] == 20
    assert state["outbox"]["dropped"] == {"OK": 10, "NG": 5, "ERROR": 5}
    assert any(p.startswith("outbox_dropped: 20 ") for p in state["problems"]), state["problems"]


# -- 4. outbox unwritable -------------------------------------------------------------------------


def test_an_outbox_that_cannot_be_opened_hands_out_no_seq_that_could_repeat(
    mosquitto, pngs, tmp_path
):
    """Issue 31, item 4. Before: with outbox.db unopenable the daemon published verdicts with
    seq = the wall clock in ms (1796627928105), never opened the file again, and the next start
    went back to the file's 21; a gateway skipping "old" seqs then ignored the rejects. Now those
    parts are ERROR with no seq (recorded in the files, nothing on …/verdict), health says
    seq_unavailable, and once the file can be opened the station goes on above its mark."""
    state_dir = tmp_path / "state"
    write_parts(tmp_path / "frames", ["good", "empty", "good", "crack"], pngs)
    first = station_config(tmp_path, port=mosquitto.port, mqtt=QUIET)
    with Daemon(first) as daemon:  # one pass over the folder: seqs 1..4, a clean stop
        assert daemon.wait(60) == 0, daemon.tail()
    assert [s for s, _ in outbox_rows(state_dir)[0]] == []  # all acknowledged
    (state_dir / "outbox.db").rename(state_dir / "kept.db")
    # A folder where the database file should be: no chmod trick (root ignores permissions).
    (state_dir / "outbox.db").mkdir()
    (tmp_path / "out" / "verdicts.jsonl").unlink()
    config = station_config(
        tmp_path, port=mosquitto.port, camera={"loop": True, "rate_hz": 20}, mqtt=QUIET
    )
    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub, Daemon(config) as daemon:
        wait_until(lambda: len(jsonl(tmp_path)) >= 8, 30, "8 parts recorded")
        assert daemon.running, daemon.tail()
        wait_until(lambda: "seq_unavailable" in str(health(tmp_path)), 10, "the problem")
        blocked = health(tmp_path)
        assert sub.messages(VERDICT) == []
        (state_dir / "outbox.db").rmdir()  # the state folder is mended
        (state_dir / "kept.db").rename(state_dir / "outbox.db")
        sub.wait_for(8, timeout=30, topic=VERDICT)
        wait_until(lambda: "seq_unavailable" not in str(health(tmp_path)), 10, "problem gone")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.tail()
        verdicts = first_arrivals(sub.messages(VERDICT))

    problems = [p for p in blocked["problems"] if p.startswith("seq_unavailable")]
    assert len(problems) == 1 and blocked["state"] == "degraded", blocked["problems"]
    records = jsonl(tmp_path)
    unrecorded = [r for r in records if r["seq"] == 0]
    assert len(unrecorded) >= 8
    assert all(r["verdict"] == "ERROR" and r["durable"] is False for r in unrecorded)
    assert all(r["error"].startswith("seq_unavailable: verdict ") for r in unrecorded)
    assert {r["error"].split()[2] for r in unrecorded} == {"OK", "NG", "ERROR"}  # as judged
    seqs = [v["seq"] for v in verdicts]
    assert seqs == list(range(5, 5 + len(seqs)))  # above the file's 4, no gap, no repeat
    assert all(v["durable"] is True for v in verdicts)
    assert daemon.events("outbox.in_memory") and daemon.events("outbox.opened_again")


# -- 5. Last Will -------------------------------------------------------------------------------


def retained_status(broker: LocalBroker) -> dict[str, Any]:
    """What a client subscribing now gets: the retained status."""
    with Subscriber(broker.host, broker.port, STATUS) as fresh:
        (message,) = fresh.wait_for(1)
        assert message.retain
        return message.json()


def test_last_will_offline_on_kill_online_on_restart_stopped_on_sigterm(mosquitto, pngs, tmp_path):
    write_parts(tmp_path / "frames", ["good"] * 3, pngs)
    config = station_config(
        tmp_path, port=mosquitto.port, camera={"loop": True, "rate_hz": 10}, mqtt=QUIET
    )
    with Subscriber(mosquitto.host, mosquitto.port, STATUS) as watch:

        def wait_state(n: int, state: str) -> dict[str, Any]:
            # the n-th status message the watcher got, once it is there
            messages = watch.wait_for(n, timeout=15)
            assert messages[n - 1].json()["state"] == state, [m.json() for m in messages]
            return messages[n - 1].json()

        with Daemon(config, "run1") as run1:
            online1 = wait_state(1, "online")
            assert retained_status(mosquitto) == online1
            run1.signal(signal.SIGKILL)
            assert run1.wait(10) == -signal.SIGKILL
        # A killed process's socket is closed by the kernel: mosquitto sends the will at once.
        offline = wait_state(2, "offline")
        assert offline["boot_id"] == online1["boot_id"]
        assert retained_status(mosquitto) == offline

        with Daemon(config, "run2") as run2:
            online2 = wait_state(3, "online")
            assert online2["boot_id"] != online1["boot_id"]
            assert retained_status(mosquitto) == online2
            run2.signal(signal.SIGTERM)
            assert run2.wait(30) == 0, run2.tail()
        stopped = wait_state(4, "stopped")
        assert stopped["boot_id"] == online2["boot_id"]
        assert retained_status(mosquitto) == stopped
        time.sleep(0.5)  # a clean disconnect: no will follows the "stopped"
        assert len(watch.messages()) == 4
        assert retained_status(mosquitto)["state"] == "stopped"
    assert '"event": "station.stopped"' in run2.stderr.read_text()
