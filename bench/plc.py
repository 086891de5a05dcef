"""Trigger -> result latency over OPC UA (method call and bit handshake), Modbus TCP and MQTT,
against one running `inspectd run` (a child process, as systemd starts it) with all three on,
and the engine's time beside it.

One part at a time per protocol, paced at --rate-hz, from a client on the same host that polls
every millisecond (a PLC's scan cycle is 1-10 ms): the clock
starts when the trigger is written (the coil, the Trigger variable, the method call, the MQTT
publish) and stops when the client sees the result (ResultValid read back, the method's return,
the answer message). "pipeline" is each verdict's own capture -> decided time (its
``latency_ms``: grab, preprocess, inference, decision), and "infer" the model's share (…/stats);
what the handshake adds is the difference between a protocol's p50/p99 and the pipeline's.

    .venv/bin/python bench/plc.py                      # products/button-patchcore, 300 parts each
    .venv/bin/python bench/plc.py --product button --parts 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from asyncua import Client, ua
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pymodbus.client import ModbusTcpClient

from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.demo import REPO_PRODUCTS, write_parts
from inspectd.inspection import Inspection
from inspectd.mqtt.broker import LocalBroker
from inspectd.mqtt.paho_client import set_no_delay
from inspectd.plc import modbus as mb
from inspectd.plc.handshake import Handshake

BASE = "inspectd/v1/bench/l1/plc"
WARMUP = 10
# A PLC polls once a scan cycle; a client that polls without pause takes one of this box's two
# cores from the daemon it measures.
POLL_S = 0.001
RUN = "import sys; from inspectd.cli import main; sys.exit(main(sys.argv[1:]))"


def pct(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


class Daemon:
    """`inspectd run` in a child process; its JSON log in work/daemon.log."""

    def __init__(self, config: Path, work: Path, env: dict[str, str]) -> None:
        self.log = work / "daemon.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUN, "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 - the child holds it
            env={**os.environ, **env},
        )

    def event(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{") and f'"{name}"' in line:
                    return json.loads(line)
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        raise SystemExit(f"no {name} in {timeout} s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class MqttRequester:
    def __init__(self, port: int) -> None:
        self.answers: dict[str, float] = {}
        self.verdicts: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, Any] = {}
        self.cv = threading.Condition()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_message = self._on_message
        c.on_socket_open = set_no_delay  # as a PLC gateway should (docs/mqtt.md)
        c.connect("127.0.0.1", port)
        c.subscribe([("bench/answers", 1), (f"{BASE}/verdict", 1), (f"{BASE}/stats", 0)])
        c.loop_start()
        self.client = c
        time.sleep(0.5)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        body = json.loads(msg.payload)
        with self.cv:
            if msg.topic == "bench/answers":
                self.answers[body["request_id"]] = t
            elif msg.topic.endswith("/verdict"):
                self.verdicts[body["part_id"]] = body
            else:
                self.stats = body
            self.cv.notify_all()

    def trigger(self, part: str) -> float:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "bench/answers"
        t0 = time.monotonic()
        self.client.publish(
            f"{BASE}/trigger",
            json.dumps({"request_id": part, "part_id": part}),
            1,
            properties=props,
        )
        with self.cv:
            self.cv.wait_for(lambda: part in self.answers, 30)
        return (self.answers[part] - t0) * 1000.0


def paced(parts: list[str], rate_hz: float, one: Any) -> list[float]:
    out, t_next = [], time.monotonic()
    for part in parts:
        t_next += 1.0 / rate_hz
        out.append(one(part))
        time.sleep(max(0.0, t_next - time.monotonic()))
    return out


def modbus_bits(port: int, parts: list[str], rate_hz: float) -> list[float]:
    c = ModbusTcpClient("127.0.0.1", port=port)
    c.connect()

    def one(part: str) -> float:
        c.write_registers(mb.HR_PART_ID, mb.text_registers(part))
        t0 = time.monotonic()
        c.write_coil(mb.COIL_TRIGGER, True)
        while not c.read_holding_registers(mb.HR_STATUS, count=1).registers[0] & 8:
            time.sleep(POLL_S)
        dt = (time.monotonic() - t0) * 1000.0
        c.read_holding_registers(mb.HR_STATUS, count=mb.OUT_END - mb.OUT_START)
        c.write_coil(mb.COIL_TRIGGER, False)
        c.write_coil(mb.COIL_RESULT_ACK, True)
        while c.read_holding_registers(mb.HR_STATUS, count=1).registers[0] & 8:
            time.sleep(POLL_S)
        c.write_coil(mb.COIL_RESULT_ACK, False)
        return dt

    try:
        return paced(parts, rate_hz, one)
    finally:
        c.close()


async def opcua_runs(
    port: int, method_parts: list[str], bit_parts: list[str], rate_hz: float
) -> tuple[list[float], list[float]]:
    async with Client(f"opc.tcp://127.0.0.1:{port}/inspectd/") as client:
        idx = await client.get_namespace_index("urn:inspectd:plc")
        station = await client.nodes.objects.get_child(f"{idx}:plc")
        hs = await station.get_child(f"{idx}:Handshake")
        part_id, trig, valid, ack = [
            await hs.get_child(f"{idx}:{k}")
            for k in ("PartId", "Trigger", "ResultValid", "ResultAck")
        ]
        method, bits = [], []
        t_next = time.monotonic()
        for part in method_parts:
            t_next += 1.0 / rate_hz
            t0 = time.monotonic()
            await station.call_method(f"{idx}:Trigger", part)
            method.append((time.monotonic() - t0) * 1000.0)
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        for part in bit_parts:
            t_next = time.monotonic() + 1.0 / rate_hz
            await part_id.write_value(ua.Variant(part, ua.VariantType.String))
            t0 = time.monotonic()
            await trig.write_value(True)
            while not await valid.read_value():
                await asyncio.sleep(POLL_S)
            bits.append((time.monotonic() - t0) * 1000.0)
            await trig.write_value(False)
            await ack.write_value(True)
            while await valid.read_value():
                await asyncio.sleep(POLL_S)
            await ack.write_value(False)
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        return method, bits


def core_alone(n: int) -> list[float]:
    """The handshake core by itself: submit -> answer through its queue, a thread that plays
    the pipeline (take the request, settle, hand the verdict on) and the answer callback; no
    camera, model, disk or network. Milliseconds per part."""
    core = Handshake()
    done = threading.Event()
    took: list[float] = []

    def pipeline() -> None:
        for _ in range(n):
            request = core.queue.get()
            now = time.time()
            record = VerdictRecord(
                station="bench",
                product="p",
                part_id=request.part_id,
                verdict=Verdict.OK,
                score=0.1,
                threshold=0.2,
                model_name="m",
                model_sha256="0" * 64,
                model_version=1,
                camera_serial="",
                frame_id=0,
                t_capture=now,
                t_verdict=now,
                latency_ms=0.0,
                request_id=request.request_id,
            )
            core.settle([record])
            core.handle(Inspection(record, frame=None))  # type: ignore[arg-type]

    worker = threading.Thread(target=pipeline, daemon=True)
    worker.start()
    for i in range(n):
        done.clear()
        t0 = time.monotonic()
        core.submit(f"c{i}", f"c{i}", t0 + 10.0, lambda result: done.set())
        done.wait(5.0)
        took.append((time.monotonic() - t0) * 1000.0)
    worker.join(5.0)
    core.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=Path, default=REPO_PRODUCTS)
    ap.add_argument("--product", default="button-patchcore")
    ap.add_argument("--parts", type=int, default=300, help="parts per protocol")
    ap.add_argument("--rate-hz", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1, help="engine threads")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="inspectd-bench-plc-"))
    frames = work / "frames"
    labels = write_parts(frames, 40)
    for name, label in labels.items():  # good parts only: every protocol sees the same work
        if label != "good":
            (frames / f"{name}.png").unlink()
    broker = LocalBroker.start_mosquitto()
    config = work / "station.yaml"
    config.write_text(
        json.dumps(
            {
                "station": {"site": "bench", "line": "l1", "name": "plc"},
                "product": args.product,
                "products_dir": str(args.products),
                "state_dir": str(work / "state"),
                "camera": {"source": "folder", "path": str(frames), "loop": True, "trigger": "plc"},
                "engine": {"threads": args.threads},
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "overlays": "none",
                    "stats_interval_s": 1,
                },
                "plc": {
                    "result_deadline_ms": 10000,
                    "opcua": {"enabled": True, "port": 0},
                    "modbus": {"enabled": True, "port": 0},
                },
                "logging": {"format": "json"},
            }
        )
    )
    daemon = Daemon(config, work, env={})
    try:
        ua_port = daemon.event("plc.opcua.listening")["port"]
        mb_port = daemon.event("plc.modbus.listening")["port"]
        daemon.event("station.ready")
        req = MqttRequester(broker.port)
        n, r = args.parts, args.rate_hz
        # WARMUP more parts each, not counted: the first ones pay connection and cache set-up
        names = {k: [f"{k}-{i:05d}" for i in range(n + WARMUP)] for k in ("mq", "mb", "uam", "uab")}
        runs = {
            "MQTT (trigger -> answer)": ("mq", paced(names["mq"], r, req.trigger)),
            "Modbus (coil -> ResultValid)": ("mb", modbus_bits(mb_port, names["mb"], r)),
        }
        method, bits = asyncio.run(opcua_runs(ua_port, names["uam"], names["uab"], r))
        runs["OPC UA Trigger() call"] = ("uam", method)
        runs["OPC UA bits (Trigger -> ResultValid)"] = ("uab", bits)
        time.sleep(2.5)  # the last verdicts and a …/stats message
        with req.cv:
            verdicts = list(req.verdicts.values())
            stats = dict(req.stats)
    finally:
        daemon.stop()
        broker.close()

    by_part = {v["part_id"]: v for v in verdicts}
    infer = stats.get("stage_ms_p50", {}).get("infer", float("nan"))
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        "?",
    )
    print(
        f"inspectd PLC bench: {args.product}, {n} parts per protocol at {r:g} Hz, one at a time, "
        f"client and daemon on one host ({os.cpu_count()} cores, {cpu})"
    )
    stages = stats.get("stage_ms_p50", {})
    print(
        f"  engine: model inference p50 {infer:.2f} ms a part; other stages p50 (…/stats): "
        + ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if k != "infer")
    )
    print(
        f"  {'ms':38s} {'trigger->result':>16s} {'capture->decided':>17s} {'on top':>14s} "
        f"{'p50/infer':>9s}"
    )
    print(f"  {'':38s} {'p50':>8s}{'p99':>8s} {'p50':>8s}{'p99':>9s} {'p50':>6s}{'p99':>8s}")
    for name, (key, values) in runs.items():
        parts, values = names[key][WARMUP:], values[WARMUP:]
        pipe = [by_part[p]["latency_ms"] for p in parts if p in by_part]
        on_top = [
            v - by_part[p]["latency_ms"] for p, v in zip(parts, values, strict=True) if p in by_part
        ]
        late = sum(1 for p in parts if by_part.get(p, {}).get("late"))
        (p50, p99), (q50, q99), (d50, d99) = pct(values), pct(pipe), pct(on_top)
        print(
            f"  {name:38s} {p50:8.2f}{p99:8.2f} {q50:8.2f}{q99:9.2f} {d50:6.2f}{d99:8.2f} "
            f"{p50 / infer:9.2f}" + (f"  ({late} late)" if late else "")
        )
    c50, c99 = pct(core_alone(5000))
    print(
        f"  the handshake core alone (submit -> answer, two thread hand-overs, 5000 parts): "
        f"p50 {c50:.3f} ms  p99 {c99:.3f} ms"
    )
    print(
        "  on top: per part, trigger->result minus its own capture->decided (the verdict's "
        "latency_ms):\n  the request's way to the camera thread, the grab (a PNG read and "
        "decoded here), the outbox\n  commit (fsync) and the answer's way back through the "
        "protocol"
    )


if __name__ == "__main__":
    main()
