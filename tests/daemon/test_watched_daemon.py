"""The watched folder end to end: `inspectd run` as its own process, a real directory, a real
mosquitto, a subscriber recording every verdict.

A burst dropped into a running station, a restart (SIGTERM) and a kill -9 in the middle of a
burst, and a file still being written. "Exactly once" is checked on what reaches the broker:
every file has verdicts under exactly one seq (QoS 1 may deliver that seq twice; a replay
after kill -9 sends it again flagged `replayed`), and no file is left in the folder. The
crash windows one at a time (commit without move, move without forgetting) are in
test_watched_folder.py, with the source alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from support.daemon_process import Daemon
from support.mqtt_client import Received, Subscriber
from support.paths import needs_bundle
from support.station import VERDICT, station_config
from support.waiting import wait_until

pytestmark = needs_bundle


def kinds_for(n: int) -> list[str]:
    return ["crack" if i % 17 == 5 else "corrupt" if i % 61 == 30 else "good" for i in range(n)]


def drop(
    folder: Path,
    names: list[str],
    kinds: list[str],
    pngs: dict[str, list[bytes]],
    mtime0: int = 1_700_000_000 * 10**9,
) -> None:
    """Each file written as `name.tmp` and renamed (how a careful writer hands over), with
    mtimes one ms apart in list order: the order the station must inspect them in."""
    for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        tmp = folder / f"{name}.tmp"
        choices = pngs[kind]
        tmp.write_bytes(choices[i % len(choices)])
        mtime = mtime0 + i * 10**6
        os.utime(tmp, ns=(mtime, mtime))
        os.rename(tmp, folder / name)


def watched_config(tmp: Path, port: int, incoming: Path, *, settle_s: float = 0.2) -> Path:
    """The station watching ``incoming``; no overlays, 10 s for the broker to take what is
    stored on stop."""
    return station_config(
        tmp,
        port=port,
        camera={"path": incoming, "watch": {"enabled": True, "settle_s": settle_s, "poll_s": 0.1}},
        mqtt={"overlays": "none", "drain_timeout_s": 10},
    )


def by_seq(messages: list[Received]) -> dict[int, dict[str, Any]]:
    """The verdicts by seq; a seq that came twice (QoS 1, a replay) must be the same verdict."""
    out: dict[int, dict[str, Any]] = {}
    for m in messages:
        v = m.json()
        seen = out.setdefault(v["seq"], v)
        assert {**seen, "replayed": None} == {**v, "replayed": None}, (seen, v)
    return out


def part_ids(sub: Subscriber) -> set[str]:
    return {v["part_id"] for v in by_seq(sub.messages()).values()}


def assert_exactly_once(verdicts: dict[int, dict[str, Any]], parts: list[str]) -> None:
    """Every part under exactly one seq, and seq order is the drop order."""
    seqs: dict[str, list[int]] = {}
    for seq, v in verdicts.items():
        seqs.setdefault(v["part_id"], []).append(seq)
    twice = {p: s for p, s in seqs.items() if len(s) > 1}
    assert not twice, f"inspected more than once: {twice}"
    assert sorted(seqs) == sorted(parts), f"missing: {sorted(set(parts) - set(seqs))[:10]}"
    assert [verdicts[s]["part_id"] for s in sorted(verdicts)] == parts


def assert_folders(incoming: Path, names: list[str], kinds: list[str]) -> None:
    """Nothing left to inspect; OK/NG files in done/, the undecodable ones in failed/."""
    assert sorted(p.name for p in incoming.iterdir() if p.is_file()) == []
    failed = sorted(n for n, k in zip(names, kinds, strict=True) if k == "corrupt")
    assert sorted(os.listdir(incoming / "failed")) == failed
    assert sorted(os.listdir(incoming / "done")) == sorted(set(names) - set(failed))


def test_a_burst_into_a_running_station_is_inspected_once_each_in_order(mosquitto, pngs, tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    n = 1000
    names = [f"b{i:04d}.png" for i in range(n)]
    kinds = kinds_for(n)
    parts = [Path(n).stem for n in names]
    config = watched_config(tmp_path, mosquitto.port, incoming)
    with Subscriber(mosquitto.host, mosquitto.port, VERDICT) as sub, Daemon(config) as daemon:
        daemon.wait_event("station.ready", timeout=60)
        t0 = time.monotonic()
        drop(incoming, names, kinds, pngs)
        wait_until(lambda: len(part_ids(sub)) >= n, 120, f"{n} verdicts")
        seconds = time.monotonic() - t0
        time.sleep(1.0)  # ten more polls: nothing is read again
        assert daemon.running, daemon.tail()
        assert daemon.terminate() == 0, daemon.tail()
    verdicts = by_seq(sub.messages())
    assert_exactly_once(verdicts, parts)
    assert sorted(verdicts) == list(range(1, n + 1))  # one station, one run: seq 1..n
    kind_of = dict(zip(parts, kinds, strict=True))
    for v in verdicts.values():
        if kind_of[v["part_id"]] == "corrupt":
            assert v["verdict"] == "ERROR" and "cannot decode image file" in v["error"], v
        else:
            assert v["error"] is None and v["score"] is not None, v
            assert v["verdict"] == ("NG" if kind_of[v["part_id"]] == "crack" else "OK"), v
    assert_folders(incoming, names, kinds)
    print(f"\n{n} files dropped -> {n} verdicts at the broker in {seconds:.1f} s")


@pytest.mark.parametrize("how", ["sigterm", "kill_9"])
def test_a_stop_in_the_middle_of_a_burst_loses_no_file_and_inspects_none_twice(
    mosquitto, pngs, tmp_path, how
):
    incoming = tmp_path / "in"
    incoming.mkdir()
    n = 400
    # Names run against the mtimes in blocks: the order is (mtime, name), not the name order.
    names = [f"s{(i // 10) * 10 + 9 - i % 10:04d}.png" for i in range(n)]
    kinds = kinds_for(n)
    parts = [Path(n).stem for n in names]
    drop(incoming, names, kinds, pngs)  # before the start: one listing finds them all
    config = watched_config(tmp_path, mosquitto.port, incoming)
    with Subscriber(
        mosquitto.host, mosquitto.port, VERDICT, client_id=f"watch-{how}", persistent=True
    ) as sub:
        with Daemon(config, "run1") as run1:
            wait_until(lambda: len(part_ids(sub)) >= 40, 60, "40 verdicts from run 1")
            if how == "kill_9":
                run1.signal(signal.SIGKILL)
                assert run1.wait(10) == -signal.SIGKILL
            else:
                assert run1.terminate() == 0, run1.tail()
        left = sorted(p.name for p in incoming.iterdir() if p.is_file())
        assert 0 < len(left) < n, "the stop came in the middle of the burst"
        with Daemon(config, "run2") as run2:
            wait_until(lambda: len(part_ids(sub)) >= n, 90, f"{n} parts with verdicts")
            assert run2.terminate() == 0, run2.tail()
        time.sleep(0.3)  # anything that would come after
        verdicts = by_seq(sub.messages())
    assert_exactly_once(verdicts, parts)
    assert_folders(incoming, names, kinds)
    replayed = [s for s, v in verdicts.items() if v["replayed"]]
    if how == "sigterm":
        assert not replayed and not run2.events("capture.watch.resumed")
    # files run 1 committed and did not move: run 2 moved them under run 1's seq (checked
    # above: no second seq) without inspecting them
    resumed = run2.events("capture.watch.resumed")
    for e in resumed:
        assert e["file"] in left and verdicts[e["seq"]]["part_id"] + ".png" == e["file"]
    print(
        f"\n{how}: {n - len(left)} moved by run 1, {len(resumed)} finished by run 2, "
        f"{len(replayed)} replayed"
    )


def test_a_file_still_being_written_is_read_only_once_it_is_complete(mosquitto, pngs, tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    data = pngs["good"][1]
    config = watched_config(tmp_path, mosquitto.port, incoming, settle_s=2.0)
    stop = threading.Event()

    def slow_writer() -> None:
        """Writes slow.png a chunk every 0.1 s (well inside the 2 s settle time) until told."""
        chunk = len(data) // 200  # 20 s to write it all: far longer than the test waits
        with open(incoming / "slow.png", "wb") as f:
            pos = 0
            while not stop.is_set() and pos < len(data) - 2 * chunk:
                f.write(data[pos : pos + chunk])
                f.flush()
                pos += chunk
                time.sleep(0.1)
            stop.wait()
            f.write(data[pos:])

    with Subscriber(mosquitto.host, mosquitto.port, VERDICT) as sub, Daemon(config) as daemon:
        daemon.wait_event("station.ready", timeout=60)
        writer = threading.Thread(target=slow_writer)
        writer.start()
        try:
            time.sleep(0.3)  # slow.png exists and is growing
            (incoming / "marker.png").write_bytes(pngs["good"][2])
            # marker.png was written after slow.png and settled: the station has watched
            # slow.png for longer than settle_s, and must not have read it
            wait_until(lambda: "marker" in part_ids(sub), 30, "marker.png's verdict")
            assert "slow" not in part_ids(sub)
            assert writer.is_alive(), "the writer finished before the check"
        finally:
            stop.set()
            writer.join()
        wait_until(lambda: "slow" in part_ids(sub), 30, "slow.png's verdict")
        time.sleep(0.5)
        assert daemon.terminate() == 0, daemon.tail()
    (slow,) = [v for v in by_seq(sub.messages()).values() if v["part_id"] == "slow"]
    assert slow["verdict"] == "OK" and slow["error"] is None and slow["score"] is not None
    assert sorted(os.listdir(incoming / "done")) == ["marker.png", "slow.png"]
