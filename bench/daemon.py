"""The real station on a folder camera, for the bench scripts: its pipeline stats and, with a
broker, capture -> verdict received by a subscriber on the same host (what a PLC gateway sees).

The subscriber notes the wall time each ``…/verdict`` arrives; a sink notes each part's
``t_capture`` by seq; the difference is the end-to-end latency, from the frame grabbed to the
verdict out of the broker, through the outbox commit (fsync) and MQTT QoS 1.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from inspectd.config import StationConfig
from inspectd.inspection import Inspection, PipelineStats
from inspectd.mqtt.broker import LocalBroker
from inspectd.mqtt.paho_client import set_no_delay
from inspectd.service.station import Station

# The camera rate for latency figures: a brisk line. Faster than the daemon's own per-part work
# sustains (the tiny models' engines run at hundreds per second), it would measure queueing.
LATENCY_RATE_HZ = 30.0


class _Arrivals:
    """Verdict arrival times by seq (subscriber) and capture times by seq (sink)."""

    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self.captured: dict[int, float] = {}
        self._lock = threading.Lock()
        self.subscribed = threading.Event()

    def on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.time()
        with self._lock:
            self.received[json.loads(msg.payload)["seq"]] = t

    def handle(self, inspection: Inspection) -> None:  # a VerdictSink
        with self._lock:
            self.captured[inspection.record.seq] = inspection.record.t_capture

    def close(self) -> None:
        pass

    def latencies_ms(self) -> list[float]:
        with self._lock:
            return [
                (t - self.captured[s]) * 1000.0
                for s, t in self.received.items()
                if s in self.captured
            ]


def run_daemon(
    products: Path,
    product: str,
    folder: Path,
    work: Path,
    broker: LocalBroker | None,
    parts: int,
    engine: dict[str, Any],
    rate_hz: float = 0.0,
) -> tuple[PipelineStats, list[float]]:
    """Inspect `parts` frames from `folder` (paced at `rate_hz`; 0: as fast as the station takes
    them) with NG overlays and, with a broker, MQTT QoS 1. Returns the pipeline's stats and the
    capture -> verdict received latencies in ms (empty without a broker)."""
    config = StationConfig.model_validate(
        {
            "station": {"name": "bench"},
            "product": product,
            "products_dir": str(products),
            "state_dir": str(work / "state"),
            "camera": {"source": "folder", "path": str(folder), "rate_hz": rate_hz},
            "engine": engine,
            "mqtt": (
                {"host": broker.host, "port": broker.port, "protocol": broker.protocol}
                if broker
                else {"enabled": False}
            ),
            "output": {"dir": str(work / "out"), "overlays": "ng"},
        }
    )
    arrivals = _Arrivals()
    client = None
    if broker is not None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{time.monotonic_ns()}")
        client.on_socket_open = set_no_delay  # as a PLC gateway should (docs/mqtt.md)
        client.on_message = arrivals.on_message
        client.on_subscribe = lambda *_: arrivals.subscribed.set()
        client.connect(broker.host, broker.port)
        client.subscribe(f"{config.topic_base()}/verdict", qos=1)
        client.loop_start()
        if not arrivals.subscribed.wait(10.0):
            raise RuntimeError(f"no SUBACK from the broker on {broker.host}:{broker.port}")
    station = Station(config, extra_sinks=[arrivals])
    station.start()
    try:
        stats = station.run(limit=parts)
        if client is not None:
            deadline = time.monotonic() + 10.0
            while (
                len(arrivals.received) < sum(stats.verdicts.values())
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
    finally:
        station.stop()
        if client is not None:
            client.loop_stop()
            client.disconnect()
    return stats, arrivals.latencies_ms()
