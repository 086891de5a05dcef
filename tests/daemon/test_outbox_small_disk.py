"""The outbox on a real 2 MiB file system (issue 15, bug 4): SQLite's WAL grew ~33 KB per
verdict up to its default checkpoint (4 MiB), filled the folder at seq 62 and never gave the
space back, so the outbox stayed "not durable" until a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from inspectd.contract.messages import OutgoingMessage
from inspectd.outbox import WAL_LIMIT_BYTES, Outbox

from support.small_fs import fill, small_fs

PAYLOAD = json.dumps({"schema": "inspectd.verdict/1", "part_id": "p", "pad": "x" * 600}).encode()


def messages(kind: str) -> list[OutgoingMessage]:
    out = [OutgoingMessage("t/verdict", PAYLOAD)]
    if kind != "OK":
        out.append(OutgoingMessage("t/reject", PAYLOAD[:200]))
    return out


@pytest.fixture
def state(tmp_path: Path):
    with small_fs(tmp_path / "state", "2m") as folder:
        yield folder


def wal_bytes(state: Path) -> int:
    wal = state / "outbox.db-wal"
    return wal.stat().st_size if wal.exists() else 0


def test_the_wal_stays_bounded_on_a_2_mib_state_folder(state: Path) -> None:
    biggest = 0
    with Outbox(state / "outbox.db") as outbox:
        for i in range(600):  # ten times what used to fill it
            kind = "NG" if i % 5 == 0 else "OK"
            seq = outbox.append(kind, messages(kind))
            assert outbox.durable, (seq, outbox.stats()["error"])
            outbox.ack_many([(seq, None)])
            biggest = max(biggest, wal_bytes(state))
        assert outbox.stats()["depth"] == 0
    # Writes without a pause let no passive checkpoint finish: the committing thread truncates
    # the WAL at twice the limit. That plus a transaction is still far below the 2 MiB.
    assert biggest <= 2 * WAL_LIMIT_BYTES + 64 * 1024, biggest


def test_at_a_line_pace_the_checkpoint_thread_keeps_the_wal_at_its_limit(state: Path) -> None:
    biggest = 0
    with Outbox(state / "outbox.db") as outbox:
        # SQLite's own checkpoint would run inside a commit, on the sink thread, fsyncs and all
        assert outbox._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for _ in range(300):  # ~150 parts/s: several limits' worth of WAL
            seq = outbox.append("OK", messages("OK"))
            outbox.ack_many([(seq, None)])
            biggest = max(biggest, wal_bytes(state))
            time.sleep(0.005)
    assert biggest <= WAL_LIMIT_BYTES + 64 * 1024, biggest


def test_a_full_state_folder_recovers_without_a_restart_once_space_is_back(state: Path) -> None:
    with Outbox(state / "outbox.db") as outbox:
        for _ in range(5):
            outbox.ack(outbox.append("OK", messages("OK")))
        kept = [outbox.append("NG", messages("NG")) for _ in range(3)]  # not acknowledged yet
        filler = fill(state)
        # Full: verdicts go on, in memory, not durable; the acks the disk refuses are kept.
        full = [outbox.append("OK", messages("OK")) for _ in range(40)]
        assert not outbox.durable and "full" in outbox.stats()["error"]
        outbox.ack_many([(s, None) for s in kept])
        assert outbox.stats()["depth"] == 3 + 40

        filler.unlink()  # someone makes room
        seq = outbox.append("NG", messages("NG"))
        assert outbox.durable, outbox.stats()["error"]  # the next write works again
        assert [r.seq for r in outbox.pending(100)] == [*full, seq]  # the refused acks held
        assert wal_bytes(state) <= WAL_LIMIT_BYTES + 64 * 1024
        outbox.ack_many([(s, None) for s in [*full, seq]])
        assert outbox.stats()["depth"] == 0
    with Outbox(state / "outbox.db") as again:  # nothing comes back after a restart
        assert again.pending(100) == []
        assert again.last_seq == seq


# -- the daemon, on a 2 MiB state folder ----------------------------------------------------------

from support.daemon_process import Daemon  # noqa: E402
from support.mqtt_client import Subscriber  # noqa: E402
from support.paths import needs_bundle  # noqa: E402
from support.station import (  # noqa: E402
    VERDICT,
    first_arrivals,
    jsonl,
    station_config,
    write_parts,
)
from support.waiting import wait_until  # noqa: E402


@needs_bundle
def test_daemon_on_a_2_mib_state_folder_stays_durable(mosquitto, pngs, tmp_path, state) -> None:
    # 300 parts: the unbounded WAL filled the folder at seq 62
    kinds = ["crack" if i % 10 == 3 else "good" for i in range(300)]
    parts = write_parts(tmp_path / "frames", kinds, pngs)
    config = station_config(
        tmp_path, port=mosquitto.port, camera={"rate_hz": 60}, mqtt={"overlays": "none"}
    )
    with Subscriber(mosquitto.host, mosquitto.port, VERDICT) as sub, Daemon(config) as daemon:
        assert daemon.wait(90) == 0, daemon.tail()
        wait_until(lambda: len(sub.messages()) >= 300, 20, "300 verdicts")
        verdicts = first_arrivals(sub.messages())
    assert [v["part_id"] for v in verdicts] == parts
    assert all(v["durable"] is True for v in verdicts)
    assert daemon.events("outbox.disk_failed") == []
    assert sorted(p.name for p in state.iterdir()) == ["health.json", "outbox.db"]


@needs_bundle
def test_daemon_recovers_from_a_full_state_folder_without_a_restart(
    mosquitto, pngs, tmp_path, state
) -> None:
    write_parts(tmp_path / "frames", ["good", "crack", "good", "good"], pngs)
    config = station_config(
        tmp_path,
        port=mosquitto.port,
        camera={"loop": True, "rate_hz": 20},
        mqtt={"overlays": "none", "health_interval_s": 0.5},
    )
    with Subscriber(mosquitto.host, mosquitto.port, VERDICT) as sub, Daemon(config) as daemon:
        sub.wait_for(10, timeout=30)
        filler = fill(state)
        daemon.wait_event("outbox.disk_failed")
        n_full = len(jsonl(tmp_path))
        wait_until(lambda: len(jsonl(tmp_path)) >= n_full + 20, 20, "20 parts with a full disk")
        # health.json could not be written all that while (every 0.5 s): no 0-byte .tmp stays
        assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
        filler.unlink()
        (ok_again,) = daemon.wait_event("outbox.disk_ok_again")
        wait_until(
            lambda: '"outbox_not_durable' not in (state / "health.json").read_text(),
            10,
            "health.json without outbox_not_durable",
        )
        n_after = len(jsonl(tmp_path))
        wait_until(lambda: len(jsonl(tmp_path)) >= n_after + 10, 20, "10 more parts")
        assert daemon.terminate() == 0, daemon.tail()
        recorded = jsonl(tmp_path)
        wait_until(lambda: len(first_arrivals(sub.messages())) >= len(recorded), 20, "all")
        verdicts = first_arrivals(sub.messages())

    seqs = [v["seq"] for v in verdicts]
    assert seqs == list(range(1, len(recorded) + 1))  # every verdict, once, in order
    durable = [v["durable"] for v in verdicts]
    assert False in durable and durable[-10:] == [True] * 10  # not durable, then durable again
    assert ok_again["seq"] > seqs[durable.index(False)]
    assert json.loads((state / "health.json").read_text())["outbox"]["durable"] is True
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
