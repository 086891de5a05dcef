"""What the durable outbox costs per verdict, and verdicts/s through a real broker, with and
without it, measured in one run.

    .venv/bin/python bench/outbox.py [--verdicts 5000] [--batch 16] [--pause-ms 5] [--dir PATH]

1. Cost on the sink thread: ``Delivery.record()`` (seq, payloads, one fsynced transaction)
   per verdict, p50/p99, once with one verdict per transaction and ``--pause-ms`` between
   them (a slow line: every verdict pays an fsync, and the outbox's checkpoint thread has the
   time between parts) and once with ``--batch`` verdicts per transaction back to back (a busy
   line: the sink thread commits what is queued in one go), against building the same
   messages and handing them straight to the publisher. "adds" is the difference of the two.
2. Sustained rate through a private mosquitto: the same verdicts published without the outbox
   (enqueue, wait for every PUBACK) and with it (record in batches, feeder, PUBACK deletes the
   row, wait until the outbox is empty). The ratio says what durability costs in throughput.

fsync is what the outbox pays for: ``--dir`` should be on the disk the state folder will be on
(tmpfs makes fsync free and the figures meaningless).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from inspectd.contract.messages import verdict_messages
from inspectd.contract.topics import Topics
from inspectd.contract.verdict import Region, Verdict, VerdictRecord
from inspectd.delivery import Delivery
from inspectd.logs import configure_logging
from inspectd.mqtt.broker import LocalBroker
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.outbox import Outbox

TOPICS = Topics("inspectd/v1/bench/l1/outbox")
WINDOW_S = 60.0


def make_records(n: int) -> list[VerdictRecord]:
    now = time.time()
    kinds = [Verdict.OK] * 8 + [Verdict.NG, Verdict.ERROR]  # about what a line sees
    return [
        VerdictRecord(
            station="outbox",
            product="button",
            part_id=f"P{i:07d}",
            verdict=kinds[i % 10],
            score=0.01 * (i % 97),
            threshold=0.5,
            model_name="ae",
            model_sha256="ab" * 32,
            model_version=1,
            camera_serial="SIM-0001",
            frame_id=i,
            t_capture=now,
            t_verdict=now,
            latency_ms=7.5,
            regions=[Region(10, 12, 30, 20, 410, 0.93)] if kinds[i % 10] is Verdict.NG else [],
        )
        for i in range(n)
    ]


def pct(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def publisher(broker: LocalBroker | None, port: int) -> MqttPublisher:
    return MqttPublisher(
        host="127.0.0.1",
        port=broker.port if broker else port,
        protocol="5",
        client_id=f"bench-outbox-{time.monotonic_ns()}",
        keepalive_s=30,
        topics=TOPICS,
        status_fields={"boot_id": "bench"},
        max_queued=1_000_000,
    )


def cost_per_verdict(
    work: Path, records: list[VerdictRecord], batch: int, sync: str, pause_s: float
) -> dict[str, float]:
    """ms per verdict on the sink thread: record() vs building and enqueuing the messages."""
    direct = publisher(None, 1)  # never started: enqueue only queues, as the sink would
    bare: list[float] = []
    for r in records:
        t0 = time.perf_counter()
        for m in verdict_messages(TOPICS, r, WINDOW_S):
            direct.enqueue(m)
        bare.append((time.perf_counter() - t0) * 1000.0)
    folder = work / f"cost-{batch}-{sync}"
    outbox = Outbox(folder / "outbox.db", sync=sync)
    sink = publisher(None, 1)
    delivery = Delivery(outbox, sink, TOPICS, travel_window_s=WINDOW_S)
    durable: list[float] = []
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        t0 = time.perf_counter()
        delivery.record(chunk)
        durable += [(time.perf_counter() - t0) * 1000.0 / len(chunk)] * len(chunk)
        if pause_s:
            time.sleep(pause_s)
    outbox.close()
    shutil.rmtree(folder)
    b50, b99 = pct(bare)
    d50, d99 = pct(durable)
    return {"bare_p50": b50, "bare_p99": b99, "outbox_p50": d50, "outbox_p99": d99}


def rate(
    work: Path, broker: LocalBroker, records: list[VerdictRecord], batch: int
) -> tuple[float, float]:
    """verdicts/s to PUBACK: without the outbox, then with it."""
    pub = publisher(broker, 0)
    pub.start()
    t0 = time.perf_counter()
    for r in records:
        for m in verdict_messages(TOPICS, r, WINDOW_S):
            pub.enqueue(m)
    assert pub.wait_published(300), "broker did not acknowledge everything"
    plain = len(records) / (time.perf_counter() - t0)
    pub.stop()

    pub = publisher(broker, 0)
    outbox = Outbox(work / "rate" / "outbox.db")
    delivery = Delivery(outbox, pub, TOPICS, travel_window_s=WINDOW_S)
    pub.start()
    delivery.start()
    t0 = time.perf_counter()
    for i in range(0, len(records), batch):
        delivery.record(records[i : i + batch])
    assert delivery.drain(300), "outbox did not drain"
    durable = len(records) / (time.perf_counter() - t0)
    delivery.close()
    pub.stop()
    outbox.close()
    return plain, durable


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--verdicts", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=16, help="verdicts per transaction under load")
    ap.add_argument(
        "--pause-ms", type=float, default=5.0, help="between verdicts, one per transaction"
    )
    ap.add_argument("--dir", type=Path, default=None, help="folder on the state folder's disk")
    args = ap.parse_args()
    configure_logging("error", "console")
    records = make_records(args.verdicts)
    base = args.dir or Path.cwd()
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-outbox-") as tmp:
        work = Path(tmp)
        fs = os.statvfs(work)
        print(f"verdicts: {args.verdicts}  folder: {work} ({fs.f_bsize}-byte blocks)")
        print("\ncost per verdict on the sink thread, ms (p50 p99)")
        for sync in ("full", "normal"):
            for batch in (1, args.batch):
                pause_s = args.pause_ms / 1000.0 if batch == 1 else 0.0
                c = cost_per_verdict(work, records, batch, sync, pause_s)
                adds = c["outbox_p99"] - c["bare_p99"]
                print(
                    f"  sync={sync:6s} {batch:3d} per commit: publish only "
                    f"{c['bare_p50']:6.3f} {c['bare_p99']:6.3f}   with outbox "
                    f"{c['outbox_p50']:6.3f} {c['outbox_p99']:6.3f}   adds p99 {adds:6.3f}"
                    f" ({'within' if adds <= 0.3 else 'OVER'} 0.3 ms)"
                )
        with LocalBroker.start_mosquitto() as broker:
            plain, durable = rate(work, broker, records, args.batch)
        print(
            f"\nsustained verdicts/s through mosquitto: without outbox {plain:8.0f}  "
            f"with outbox {durable:8.0f}  ratio {durable / plain:.2f}"
        )


if __name__ == "__main__":
    main()
