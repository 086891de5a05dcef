"""The durable outbox (inspectd.outbox) on real SQLite files: seq, durability, replay, bounds and
errors. A killed process is a real subprocess killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from inspectd.contract.messages import OutgoingMessage
from inspectd.contract.verdict import Verdict
from inspectd.outbox import SEQ_RESERVE, Outbox, OutboxError
from inspectd.outbox import store as outbox_module

from support.paths import REPO


def verdict_messages(seq: int, kind: str) -> list[OutgoingMessage]:
    """What the publisher stores per verdict: the verdict payload, plus the reject for NG/ERROR."""
    verdict = json.dumps(
        {"schema": "inspectd.verdict/1", "seq": seq, "verdict": kind, "replayed": False},
        separators=(",", ":"),
    ).encode()
    messages = [OutgoingMessage("inspectd/v1/s/l/st1/verdict", verdict)]
    if kind != "OK":
        reject = json.dumps({"part_id": f"P{seq}", "seq": seq, "verdict": kind}).encode()
        messages.append(OutgoingMessage("inspectd/v1/s/l/st1/reject", reject))
    return messages


def add(outbox: Outbox, kind: str) -> int:
    return outbox.append(kind, lambda seq: verdict_messages(seq, kind))


def seqs(outbox: Outbox) -> list[int]:
    return [row.seq for row in outbox.pending(10_000)]


def test_seq_increases_and_persists_across_reopen_even_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"  # the folder is created
    with Outbox(path) as outbox:
        assert [add(outbox, k) for k in ("OK", "NG", "ERROR")] == [1, 2, 3]
        for seq in (1, 2, 3):
            assert outbox.ack(seq)
        assert outbox.stats()["depth"] == 0
        assert outbox.last_seq == 3
    with sqlite3.connect(path) as conn:  # WAL is a property of the file
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Outbox(path) as outbox:
        assert outbox.stats()["last_seq"] == 3
        assert add(outbox, "OK") == 4  # every row was deleted, the seq still goes on
    with Outbox(path) as outbox:
        assert add(outbox, "OK") == 5
        assert seqs(outbox) == [4, 5]


@pytest.mark.parametrize("sync", ["full", "normal"])  # normal: no fsync, still kill-safe
def test_rows_survive_a_killed_process(tmp_path: Path, sync: str) -> None:
    path = tmp_path / "outbox.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from inspectd.contract.messages import OutgoingMessage
        from inspectd.outbox import Outbox
        outbox = Outbox(Path({str(path)!r}), sync={sync!r})
        for kind in ["OK", "NG", "OK", "ERROR", "OK"]:
            seq = outbox.append(kind, lambda s: [OutgoingMessage("t/verdict", b'{{"seq":%d}}' % s)])
            print("appended", seq, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint, no atexit
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "appended 5" in proc.stdout
    assert Path(str(path) + "-wal").exists()  # the rows were only in the WAL when it died
    with Outbox(path) as outbox:
        rows = outbox.pending(100)
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
        assert [r.kind for r in rows] == ["OK", "NG", "OK", "ERROR", "OK"]
        assert [json.loads(r.messages[0].payload)["seq"] for r in rows] == [1, 2, 3, 4, 5]
        # a crash leaves the reservation on disk: seq jumps over it, never reuses a number
        assert add(outbox, "OK") == SEQ_RESERVE + 1


def test_pending_in_seq_order_with_limit_and_after(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        kinds = ["OK", "NG", "ERROR", "OK", "NG"]
        for kind in kinds:
            add(outbox, kind)
        rows = outbox.pending(3)
        assert [r.seq for r in rows] == [1, 2, 3]
        assert [r.seq for r in outbox.pending(10, after=3)] == [4, 5]
        assert outbox.pending(10, after=5) == []
        ng = outbox.pending(10)[1]
        assert ng.kind is Verdict.NG and not ng.replayed
        assert [(i, m.topic.rsplit("/", 1)[1]) for i, m in ng.messages.items()] == [
            (0, "verdict"),
            (1, "reject"),
        ]
        assert ng.messages[0].qos == 1 and ng.messages[0].retain is False
        assert ng.messages[0].content_type == "application/json"
        assert ng.created == pytest.approx(time.time(), abs=60)


def test_ack_deletes_per_message_and_per_verdict(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        add(outbox, "OK")  # 1
        add(outbox, "NG")  # 2: verdict + reject
        add(outbox, "OK")  # 3
        assert outbox.ack(1)
        assert seqs(outbox) == [2, 3]
        # NG: the verdict stays until both of its messages are acknowledged
        assert outbox.ack(2, 1)
        (row,) = outbox.pending(1)
        assert row.seq == 2 and list(row.messages) == [0]
        assert outbox.stats()["depth"] == 2
        assert outbox.ack(2, 0)
        assert seqs(outbox) == [3]
        # a PUBACK for something already gone, or never there, is harmless
        assert not outbox.ack(2, 0)
        assert not outbox.ack(1)
        assert not outbox.ack(999)
        assert outbox.stats()["depth"] == 1


def test_unacknowledged_rows_are_replayed_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        add(outbox, "OK")
        add(outbox, "NG")
        outbox.append("OK", [OutgoingMessage("t/bin", b"\xff\x00 not json", content_type=None)])
        assert outbox.mark_replayed() == 0  # nothing was left by an earlier process
        stored_ng = outbox.pending(10)[1].messages
    with Outbox(path) as outbox:
        assert add(outbox, "OK") == 4  # appended by this process before mark_replayed
        with capture_logs() as logs:
            assert outbox.mark_replayed() == 3
        assert logs[0]["event"] == "outbox.replaying" and logs[0]["count"] == 3
        rows = outbox.pending(10)
        assert [r.replayed for r in rows] == [True, True, True, False]
        verdict, reject = rows[1].messages.values()
        assert json.loads(verdict.payload) == {**json.loads(stored_ng[0].payload), "replayed": True}
        assert verdict.payload.replace(b'"replayed":true', b'"replayed":false') == (
            stored_ng[0].payload
        )
        assert reject.payload == stored_ng[1].payload  # no "replayed" key: unchanged
        assert rows[2].messages[0].payload == b"\xff\x00 not json"
        assert json.loads(rows[3].messages[0].payload)["replayed"] is False
        assert outbox.mark_replayed() == 0  # idempotent
    with Outbox(path) as outbox:  # the flag is stored: still replayed after another restart
        assert [r.replayed for r in outbox.pending(10)] == [True, True, True, False]


def test_row_bound_drops_oldest_ok_first_then_ng_error(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with capture_logs() as logs, Outbox(path, max_rows=4) as outbox:
        for kind in ("OK", "NG", "OK", "ERROR"):  # 1..4
            add(outbox, kind)
        assert add(outbox, "OK") == 5  # drops 1 (oldest OK)
        assert seqs(outbox) == [2, 3, 4, 5]
        add(outbox, "NG")  # 6: drops 3
        add(outbox, "ERROR")  # 7: drops 5, the last OK
        assert [(r.seq, r.kind) for r in outbox.pending(10)] == [
            (2, "NG"),
            (4, "ERROR"),
            (6, "NG"),
            (7, "ERROR"),
        ]
        add(outbox, "OK")  # 8: no OK left to drop, so the oldest NG/ERROR goes: 2
        add(outbox, "OK")  # 9: drops 8, an OK, not the older ERROR 4
        assert seqs(outbox) == [4, 6, 7, 9]
        stats = outbox.stats()
        assert stats["depth"] == 4 and stats["last_seq"] == 9
        assert stats["dropped"] == {"OK": 4, "NG": 1, "ERROR": 0}
    drops = [e for e in logs if e["event"] == "outbox.dropped"]
    assert [(e["log_level"], e["kind"], e["seqs"]) for e in drops] == [
        ("warning", "OK", [1]),
        ("warning", "OK", [3]),
        ("warning", "OK", [5]),
        ("error", "NG", [2]),
        ("warning", "OK", [8]),
    ]
    assert all(e["reason"] == "max_rows" for e in drops)
    with Outbox(path, max_rows=4) as outbox:  # drop counts are stored with the rows
        assert outbox.stats()["dropped"] == {"OK": 4, "NG": 1, "ERROR": 0}


def test_age_bound_drops_old_rows_and_counts_them(tmp_path: Path) -> None:
    with capture_logs() as logs, Outbox(tmp_path / "o.db", max_age_s=0.3) as outbox:
        add(outbox, "OK")
        add(outbox, "ERROR")
        time.sleep(0.4)
        assert outbox.stats()["oldest_age_s"] >= 0.3
        assert seqs(outbox) == [1, 2]  # reading does not drop
        add(outbox, "NG")  # 3: makes room by age first
        assert seqs(outbox) == [3]
        assert outbox.stats()["dropped"] == {"OK": 1, "NG": 0, "ERROR": 1}
        time.sleep(0.4)
        assert outbox.prune() == 1  # for a quiet line, without an append
        stats = outbox.stats()
        assert stats["depth"] == 0 and stats["oldest_age_s"] is None
        assert stats["dropped"] == {"OK": 1, "NG": 1, "ERROR": 1}
    drops = [(e["log_level"], e["kind"], e["seqs"], e["reason"]) for e in logs if "seqs" in e]
    assert drops == [
        ("warning", "OK", [1], "max_age"),
        ("error", "ERROR", [2], "max_age"),
        ("error", "NG", [3], "max_age"),
    ]


def test_start_after_moves_seq_forward_never_back(tmp_path: Path) -> None:
    with Outbox(tmp_path / "b.db", start_after=13) as outbox:
        assert add(outbox, "OK") == 14
    with Outbox(tmp_path / "b.db", start_after=5) as outbox:
        assert add(outbox, "OK") == 15
    with Outbox(tmp_path / "b.db", start_after=100) as outbox:
        assert outbox.last_seq == 100
        assert add(outbox, "OK") == 101


def test_a_verdict_without_messages_only_takes_a_seq(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.append_many([("OK", []), ("NG", []), ("OK", [])]) == [1, 2, 3]
        assert outbox.pending() == [] and outbox.stats()["depth"] == 0
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.append("OK", []) == 4  # clean close: no gap


def test_append_many_is_one_transaction_in_order(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        items = [(k, lambda seq, k=k: verdict_messages(seq, k)) for k in ("OK", "NG", "ERROR")]
        assert outbox.append_many(items) == [1, 2, 3]


def test_a_record_that_cannot_be_stored_costs_only_itself_and_its_seq_is_never_reused(
    tmp_path: Path,
) -> None:
    # Issue 15, bug 2: one verdict whose payload raised (encode_json on a lone surrogate) cost
    # its whole batch, and the next batch was handed the same seqs again.
    def broken(seq: int) -> list[OutgoingMessage]:
        "\udcff".encode()  # what encode_json did for a part id from a non-UTF-8 file name
        return []

    def bad_topic(seq: int) -> list[OutgoingMessage]:
        return [OutgoingMessage("station/\udcff/verdict", b"{}")]  # not storable either

    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.append_many(
            [
                ("OK", verdict_messages(1, "OK")),
                ("NG", broken),
                ("OK", verdict_messages(3, "OK")),
                ("ERROR", bad_topic),
                ("NG", verdict_messages(5, "NG")),
            ]
        ) == [1, 2, 3, 4, 5]
        assert seqs(outbox) == [1, 3, 5]  # the others were stored
        assert add(outbox, "OK") == 6  # 2 and 4 are spent
        stats = outbox.stats()
        assert stats["dropped"] == {"OK": 0, "NG": 1, "ERROR": 1}  # counted, never silent
        assert stats["durable"] is True
    with Outbox(tmp_path / "o.db") as again:  # the counts are persisted, seq goes on
        assert again.stats()["dropped"] == {"OK": 0, "NG": 1, "ERROR": 1}
        assert add(again, "OK") == 7


def test_concurrent_appends_get_unique_consecutive_seqs(tmp_path: Path) -> None:
    n_threads, per_thread = 4, 25
    got: list[int] = []
    lock = threading.Lock()
    with Outbox(tmp_path / "o.db") as outbox:

        def work(i: int) -> None:
            for j in range(per_thread):
                seq = add(outbox, ["OK", "NG", "ERROR"][(i + j) % 3])
                with lock:
                    got.append(seq)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        total = n_threads * per_thread
        assert sorted(got) == list(range(1, total + 1))
        rows = outbox.pending(1000)
        assert [r.seq for r in rows] == list(range(1, total + 1))
        # the payload built inside the transaction carries the row's own seq
        assert all(json.loads(r.messages[0].payload)["seq"] == r.seq for r in rows)


def test_an_append_that_cannot_be_stored_spends_its_seq_and_is_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        add(outbox, "OK")

        def broken(seq: int) -> list[OutgoingMessage]:
            raise RuntimeError("payload could not be built")

        assert outbox.append("NG", broken) == 2
        assert (
            outbox.append("OK", [OutgoingMessage("t/#", b"{}")]) == 3
        )  # not a topic to publish on
        assert outbox.append("NG", [OutgoingMessage("t/reject", b"{}", expires=float("nan"))]) == 4
        with pytest.raises(ValueError):  # not a verdict kind: the caller's bug, before any seq
            outbox.append("MAYBE", [OutgoingMessage("t/verdict", b"{}")])
        assert add(outbox, "NG") == 5
        assert seqs(outbox) == [1, 5]
        assert outbox.stats()["dropped"] == {"OK": 1, "NG": 2, "ERROR": 0}


def test_disk_full_keeps_verdicts_in_memory_marked_not_durable(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        add(outbox, "OK")
        add(outbox, "NG")
        # A real SQLITE_FULL without filling the machine's disk: cap this connection's database
        # at the pages it has now, then append more than fits.
        conn = outbox._conn
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        big = [
            OutgoingMessage("t/verdict", b'{"seq":3,"durable":true,"pad":"%s"}' % (b"x" * 300_000))
        ]
        with capture_logs() as logs:
            assert outbox.append("ERROR", big) == 3  # never fails: kept in memory
        assert any(e["event"] == "outbox.disk_failed" and "full" in e["error"] for e in logs)
        stats = outbox.stats()
        assert not stats["durable"] and str(path) in stats["error"] and "full" in stats["error"]
        assert stats["depth"] == 3 and stats["in_memory"] == 1
        rows = outbox.pending(10)
        assert [(r.seq, r.durable) for r in rows] == [(1, True), (2, True), (3, False)]
        assert json.loads(rows[2].messages[0].payload)["durable"] is False
        assert outbox.ack(3, 0) and outbox.stats()["in_memory"] == 0
        conn.execute("PRAGMA max_page_count = 1073741823")  # the disk has room again
        assert outbox.append("ERROR", big) == 4
        assert outbox.stats()["durable"] and outbox.stats()["error"] is None
    with Outbox(path) as outbox:
        assert seqs(outbox) == [1, 2, 4]  # 3 was acknowledged from memory
        assert add(outbox, "OK") == 5  # the disk knew about 3: no reuse, no gap


def test_an_outbox_that_cannot_be_opened_gives_no_seq_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 31, item 4: it used to hand out seqs above the file's mark (or the wall clock in
    ms) from memory; the next process, opening the file, handed the same numbers out again."""
    monkeypatch.setattr(outbox_module, "REOPEN_S", 0.0)
    path = tmp_path / "o.db"
    with Outbox(path) as outbox:
        add(outbox, "OK")
        add(outbox, "NG")
    path.rename(tmp_path / "kept.db")
    path.mkdir()  # what a broken state folder looks like to sqlite: cannot be opened
    memory = Outbox.in_memory(path, "read-only file system")
    assert memory.stats()["durable"] is False and memory.stats()["error"] == "read-only file system"
    with capture_logs() as logs:
        assert memory.append_many([("OK", []), ("NG", [OutgoingMessage("t/v", b"{}")])]) == [0, 0]
        assert add(memory, "ERROR") == 0
    assert [e["event"] for e in logs].count("outbox.seq_unavailable") == 1  # once an episode
    assert memory.pending() == [] and memory.stats()["depth"] == 0  # nothing kept to publish
    (problem,) = [p for p in memory.problems() if p.startswith("seq_unavailable")]
    assert problem.startswith("seq_unavailable: 3 verdicts since ")
    path.rmdir()
    (tmp_path / "kept.db").rename(path)  # mended: the next append opens the file
    assert add(memory, "OK") == 3
    assert memory.durable and not any(p.startswith("seq_") for p in memory.problems())
    memory.close()
    with Outbox(path) as outbox:
        assert seqs(outbox) == [1, 2, 3] and add(outbox, "OK") == 4


def test_past_the_reservation_a_failing_disk_gives_no_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 31, item 4: seqs past the reservation on disk used to come from memory; a process
    that died before the disk recovered left a file whose next open handed them out again."""
    monkeypatch.setattr(Outbox, "seq_reserve", 4)
    path = tmp_path / "o.db"
    outbox = Outbox(path)
    assert add(outbox, "OK") == 1  # the reservation on disk now covers up to 4
    conn = outbox._conn
    assert conn is not None
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    big = [OutgoingMessage("t/verdict", b"x" * 300_000)]  # does not fit: a real SQLITE_FULL
    assert [outbox.append("NG", big) for _ in range(5)] == [2, 3, 4, 0, 0]
    assert [r.seq for r in outbox.pending()] == [1, 2, 3, 4]
    # Killed before the disk recovers (no close): the next process starts above the mark.
    with Outbox(path) as after_crash:
        assert add(after_crash, "OK") == 5
    outbox.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not an SQLite database, it is a text file " * 100)
    with pytest.raises(OutboxError) as info:
        Outbox(path)
    assert str(path) in str(info.value) and "not a database" in str(info.value)


def test_a_path_that_cannot_be_a_database_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "outbox.db"
    folder.mkdir()  # a folder where the file should be: unwritable even for root
    with pytest.raises(OutboxError, match="cannot open outbox") as info:
        Outbox(folder)
    assert str(folder) in str(info.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxError) as info:
        Outbox(blocker / "outbox.db")  # its folder cannot be created
    assert str(blocker / "outbox.db") in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutboxError) as info:
            Outbox(folder / "outbox.db")
        assert str(folder / "outbox.db") in str(info.value)
    finally:
        folder.chmod(0o755)


def test_a_closed_outbox_refuses_work(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    outbox.close()
    outbox.close()  # idempotent
    with pytest.raises(OutboxError, match="closed"):
        add(outbox, "OK")
    with pytest.raises(OutboxError, match="closed"):
        outbox.pending()
