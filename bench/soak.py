"""A long run of the real daemon, for what only time shows: memory or open files that grow, a WAL
that is not bounded, verdicts lost across broker outages.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 5] [--products products]
        [--product button] [--outage-every 120] [--outage-s 5] [--sample-every 10] [--dir PATH]

``inspectd run``, in its own process as systemd runs it, inspects a folder of synthetic buttons
in a loop at ``--rate`` parts/s and publishes to a private mosquitto (persistence on), which is
stopped for ``--outage-s`` every ``--outage-every`` seconds: the outbox holds the verdicts
meanwhile and replays them. A subscriber with a persistent session, as a PLC gateway has, notes
every verdict's seq. Every ``--sample-every`` seconds: the daemon's RSS, open files and threads,
the outbox WAL's size and the outbox depth (health.json). At the end the daemon gets SIGTERM.

Prints memory first / after the first minute / last / peak and its growth (least-squares lines
through the samples after the first minute, MiB per hour, over all of them and over each half,
and last over first-minute as a ratio; the samples go to ``samples.jsonl`` in ``--dir``), open
files and threads first and last, the WAL's peak, and the verdicts: recorded
(verdicts.jsonl), received, duplicates (replays after an outage: expected) and missing (must be
none). Exits 1 when a verdict is missing, the outbox is not empty at the end, or the daemon
exited with an error. The default product is the shipped one; ``--products tests/products
--rate 50`` soaks the daemon rather than the model (the tests' `ae` takes 4 ms a part).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from inspectd.config import StationConfig
from inspectd.mqtt.broker import LocalBroker
from inspectd.synthetic import DEFECTS, render_part

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


class Verdicts:
    """The subscriber: every verdict seq received, and how many came more than once."""

    def __init__(self, broker: LocalBroker, base: str) -> None:
        self.seqs: set[int] = set()
        self.duplicates = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="soak-subscriber", protocol=mqtt.MQTTv5
        )
        client.reconnect_delay_set(0.2, 2)
        client.on_connect = lambda c, *_: c.subscribe(f"{base}/verdict", qos=1)
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # the broker queues for us while we reconnect
        client.connect(broker.host, broker.port, keepalive=10, clean_start=False, properties=props)
        client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("no SUBACK from the soak broker")
        self.client = client

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        seq = json.loads(msg.payload)["seq"]
        with self._lock:
            if seq in self.seqs:
                self.duplicates += 1
            self.seqs.add(seq)

    def missing(self, upto: int) -> list[int]:
        with self._lock:
            return [s for s in range(1, upto + 1) if s not in self.seqs]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Sample:
    t: float  # seconds since the daemon started
    rss: int  # bytes
    fds: int
    threads: int
    wal: int  # bytes
    depth: int | None  # outbox depth from health.json


def sample(pid: int, t: float, state: Path) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    wal = state / "outbox.db-wal"
    try:
        depth = json.loads((state / "health.json").read_text())["outbox"]["depth"]
    except (OSError, ValueError, KeyError, TypeError):
        depth = None
    return Sample(
        t=t,
        rss=int(fields["VmRSS"].split()[0]) * 1024,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(fields["Threads"]),
        wal=wal.stat().st_size if wal.exists() else 0,
        depth=depth,
    )


def growth_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour; 0 for fewer than two points."""
    if len(points) < 2:
        return 0.0
    ts, values = zip(*points, strict=True)
    return statistics.linear_regression(ts, values).slope * 3600.0


def write_frames(folder: Path, n: int = 40) -> None:
    """Good buttons and one of each defect every ten parts: the line's NG overlays get made."""
    folder.mkdir(parents=True)
    for i in range(n):
        defect = DEFECTS[(i // 10) % len(DEFECTS)] if i % 10 == 9 else None
        image, _ = render_part(101, i, defect)
        cv2.imwrite(str(folder / f"{i:04d}_{defect or 'good'}.png"), image)


def write_config(work: Path, args: argparse.Namespace, broker: LocalBroker) -> tuple[Path, str]:
    """The station's config file, validated as the daemon will read it, and its topic base."""
    config = {
        "station": {"site": "soak", "line": "l1", "name": "cam1"},
        "product": args.product,
        "products_dir": str(args.products.resolve()),
        "state_dir": str(work / "state"),
        "camera": {
            "source": "folder",
            "path": str(work / "frames"),
            "loop": True,
            "rate_hz": args.rate,
        },
        "mqtt": {"host": broker.host, "port": broker.port},
        "output": {"dir": str(work / "out"), "overlays": "ng"},
        "logging": {"level": "warning", "format": "json"},
    }
    path = work / "station.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path, StationConfig.model_validate(config).topic_base()


def recorded_seqs(work: Path) -> list[int]:
    path = work / "out" / "verdicts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["seq"] for line in path.read_text().splitlines() if line.strip()]


def soak(args: argparse.Namespace, work: Path) -> int:
    write_frames(work / "frames")
    persistence = f"persistence true\npersistence_location {work}/\nautosave_interval 1"
    broker = LocalBroker.start_mosquitto(extra_conf=persistence)
    config, base = write_config(work, args, broker)
    subscriber = Verdicts(broker, base)
    log = (work / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "inspectd", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    ready = time.monotonic() + 120.0  # the first sample once it inspects: not the bare start-up
    while not (work / "state" / "health.json").exists() and daemon.poll() is None:
        if time.monotonic() > ready:
            daemon.kill()
            raise RuntimeError(f"the daemon wrote no health.json in 120 s: {work}/daemon.log")
        time.sleep(0.1)
    t0 = time.monotonic()
    samples: list[Sample] = []
    outages = 0
    next_outage = t0 + args.outage_every if args.outage_every > 0 else float("inf")
    next_sample = t0
    end = t0 + args.minutes * 60.0
    try:
        while time.monotonic() < end and daemon.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(sample(daemon.pid, now - t0, work / "state"))
                with (work / "samples.jsonl").open("a") as f:  # to plot a long run's curve
                    f.write(json.dumps(asdict(samples[-1])) + "\n")
                next_sample += args.sample_every
            if now >= next_outage:
                broker.stop()  # SIGTERM: mosquitto saves the queued messages first
                time.sleep(args.outage_s)
                broker.restart()
                outages += 1
                next_outage = time.monotonic() + args.outage_every
            time.sleep(0.2)
        if daemon.poll() is None:
            samples.append(sample(daemon.pid, time.monotonic() - t0, work / "state"))
            daemon.send_signal(signal.SIGTERM)  # as systemctl stop: the outbox drains first
        code = daemon.wait(timeout=60)
        seqs = recorded_seqs(work)
        last = max(seqs, default=0)
        deadline = time.monotonic() + 15.0
        while subscriber.missing(last) and time.monotonic() < deadline:
            time.sleep(0.2)
        missing = subscriber.missing(last)
        depth_end = outbox_rows(work / "state")
    finally:
        if daemon.poll() is None:
            daemon.kill()
        subscriber.close()
        broker.close()
        log.close()
    minutes = (samples[-1].t if samples else 0.0) / 60.0
    print(
        f"soak: {minutes:.1f} min of {args.product} at {args.rate:g} parts/s, {outages} broker "
        f"outages of {args.outage_s:g} s, daemon exit {code}"
    )
    report(samples, len(seqs), len(subscriber.seqs), subscriber.duplicates, missing, depth_end)
    ok = not missing and depth_end == 0 and code == 0
    if not ok:
        print(
            f"FAILED: see {work}/daemon.log" if args.dir else "FAILED (run with --dir to keep it)"
        )
    return 0 if ok else 1


def outbox_rows(state: Path) -> int | None:
    """Verdicts left in the outbox after the daemon stopped (read from the file itself)."""
    path = state / "outbox.db"
    if not path.exists():
        return None
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])


def report(
    samples: list[Sample],
    recorded: int,
    received: int,
    duplicates: int,
    missing: list[int],
    depth_end: int | None,
) -> None:
    if samples:
        first = samples[0]
        settled = next((s for s in samples if s.t >= 60.0), samples[-1])
        last = samples[-1]
        after = [(s.t, s.rss / MIB) for s in samples if s.t >= settled.t]
        half = len(after) // 2
        print(
            f"  daemon RSS MiB: first {first.rss / MIB:.1f}, after a minute "
            f"{settled.rss / MIB:.1f}, last {last.rss / MIB:.1f}, peak "
            f"{max(s.rss for s in samples) / MIB:.1f}; growth after the first minute "
            f"{growth_per_hour(after):+.1f} MiB/h (first half {growth_per_hour(after[:half]):+.1f}"
            f", second half {growth_per_hour(after[half:]):+.1f}: a leak keeps its pace, a heap "
            f"settling slows down; last / after a minute {last.rss / settled.rss:.3f})"
        )
        print(
            f"  open files {first.fds} -> {last.fds} (peak {max(s.fds for s in samples)}), "
            f"threads {first.threads} -> {last.threads}"
        )
        depths = [s.depth for s in samples if s.depth is not None]
        print(
            f"  outbox: WAL peak {max(s.wal for s in samples) / 1024:.0f} KiB, depth peak "
            f"{max(depths, default=0)}, after the stop {depth_end}"
        )
    print(
        f"  verdicts: {recorded} recorded, {received} received by the subscriber, "
        f"{duplicates} duplicates (replays after an outage), {len(missing)} missing"
        + (f": {missing[:20]}" if missing else "")
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=5.0, help="parts per second")
    ap.add_argument("--products", type=Path, default=REPO / "products")
    ap.add_argument("--product", default="button")
    ap.add_argument(
        "--outage-every", type=float, default=120.0, help="seconds between outages; 0: none"
    )
    ap.add_argument("--outage-s", type=float, default=5.0, help="how long the broker is down")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    ap.add_argument("--dir", type=Path, default=None, help="keep the run's files here")
    args = ap.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        raise SystemExit(soak(args, args.dir))
    with tempfile.TemporaryDirectory(prefix="inspectd-soak-") as tmp:
        raise SystemExit(soak(args, Path(tmp)))


if __name__ == "__main__":
    main()
