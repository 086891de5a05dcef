"""`inspectd demo`: the daemon on a bundled button product, end to end, on one machine.

`products/button` (the paper's hybrid) by default; `--product button-patchcore` runs the same
parts through the training-free feature-memory bundle instead.

Fresh buttons (good and defective, plus one corrupt file) are rendered into a folder, the
folder camera feeds the real station wiring, verdicts go to an MQTT broker (the one at
--mqtt-host, or an embedded one started for the demo) and a subscriber prints what a PLC
gateway would receive. Writes verdicts.jsonl, overlays and an archive of every part into --out.
The line page (`inspectd ui`) runs in the same process, on 127.0.0.1, and stays up after the
parts for --hold seconds (default: until Ctrl-C on a terminal), with the station: its parts
can be opened and reviewed meanwhile.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from inspectd.accuracy import auroc
from inspectd.config import StationConfig
from inspectd.contract.verdict import Verdict
from inspectd.inspection import Inspection
from inspectd.mqtt.broker import broker_reachable, start_embedded_broker
from inspectd.service.station import Station
from inspectd.synthetic import DEFECTS, render_part

if TYPE_CHECKING:
    from inspectd.ui.server import BackgroundUi

REPO_PRODUCTS = Path(__file__).resolve().parent.parent / "products"
DEMO_SEED = 20261123  # not the training seed: the demo parts are new to the model
CORRUPT_EVERY = 25  # one part in 25 is a truncated file, to show the ERROR path
# Parts per second, as from a triggered camera on a line: what the shipped hybrid keeps up with
# on one core of a small CPU box, with headroom (its cost: docs/results.md, "The demo bundle").
LINE_RATE_HZ = 5.0
UI_PORT = 8470  # the page's port when free (`inspectd ui` itself defaults to 8480)
_print_lock = threading.Lock()  # the part lines and the gateway's lines come from two threads


def _say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def write_parts(folder: Path, n: int, seed: int = DEMO_SEED) -> dict[str, str]:
    """Render n parts (about one in three defective, every defect type in turn) as PNG files.
    Returns part_id -> label ("good", a defect name, or "corrupt")."""
    folder.mkdir(parents=True, exist_ok=True)
    labels: dict[str, str] = {}
    for i in range(n):
        if (i + 1) % CORRUPT_EVERY == 0:
            label = "corrupt"
        elif i % 3 == 2:
            label = DEFECTS[(i // 3) % len(DEFECTS)]
        else:
            label = "good"
        part_id = f"{i + 1:04d}_{label}"
        image, _ = render_part(seed, i, None if label in ("good", "corrupt") else label)
        ok, png = cv2.imencode(".png", image)
        assert ok
        data = png.tobytes()
        if label == "corrupt":
            data = data[: len(data) // 2]  # a transfer cut short
        (folder / f"{part_id}.png").write_bytes(data)
        labels[part_id] = label
    return labels


class PartPrinter:
    """The demo's line per part (a sink, like MQTT and the files)."""

    def handle(self, inspection: Inspection) -> None:
        r = inspection.record
        score = "   -    " if r.score is None else f"{r.score:.5f}"
        extra = f"  {len(r.regions)} region(s)" if r.regions else ""
        if r.error:
            extra = f"  {r.error}"
        _say(
            f"  #{r.seq:<5d} {r.part_id:<22s} {r.verdict.value:<5s} score {score}  "
            f"{r.latency_ms:7.1f} ms{extra}"
        )

    def close(self) -> None:
        pass


class GatewayView:
    """A subscriber showing what a PLC gateway would receive on …/reject, counting verdicts."""

    def __init__(self, host: str, port: int, protocol: str, base_topic: str) -> None:
        version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="inspectd-demo-gateway", protocol=version
        )
        self.base = base_topic
        self.verdicts = 0
        self.rejects = 0
        self.ready = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:  # noqa: ANN001
        client.subscribe([(f"{self.base}/verdict", 1), (f"{self.base}/reject", 1)])
        self.ready.set()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        payload = json.loads(msg.payload)
        if msg.topic.endswith("/verdict"):
            self.verdicts += 1
        else:
            self.rejects += 1
            _say(
                f"  PLC  <- reject part {payload['part_id']} ({payload['verdict']}, "
                f"seq {payload['seq']})"
            )

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.verdicts < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_page(base_topic: str, host: str, port: int, protocol: str) -> BackgroundUi | None:
    """The line page for the demo station, or None with a one-line reason: the demo does not
    need it (starlette and uvicorn are the `ui` extra)."""
    try:
        import uvicorn  # noqa: F401  (BackgroundUi imports it late; its absence is told here)

        from inspectd.ui.auth import Credentials
        from inspectd.ui.config import UiConfig
        from inspectd.ui.server import BackgroundUi, bind_loopback
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0] or exc  # the package, not its submodule
        print(f"Page: not started ({missing} is not installed: pip install -e '.[ui]')")
        return None
    sock = None
    try:
        sock = bind_loopback(UI_PORT)
        cfg = UiConfig.model_validate(
            {
                "listen": {"host": "127.0.0.1", "port": sock.getsockname()[1]},
                "mqtt": {"host": host, "port": port, "protocol": protocol},  # 3.1.1 towards amqtt
                "stations": [base_topic],
            }
        )
        page = BackgroundUi(cfg, Credentials(cfg.access), sock)
        page.start()
    except (OSError, RuntimeError) as exc:
        if sock is not None:
            sock.close()
        print(f"Page: not started ({exc}); the demo goes on without it")
        return None
    # connected before the first part: verdicts are not retained, a late page would miss them
    if page.broker_connected(timeout=5.0):
        print(f"Page: {page.url}  (the line page: open it in a browser)")
    else:
        print(f"Page: {page.url}  (not connected to the broker yet: {page.broker_error})")
    return page


def hold_page(page: BackgroundUi, hold: float | None) -> None:
    """Keep the page up after the parts: 60 parts take 3 s, too short to open a browser.
    ``hold`` None: until Ctrl-C on a terminal, not at all otherwise (a script's run ends)."""
    if hold is None:
        hold = math.inf if sys.stdin is not None and sys.stdin.isatty() else 0.0
    if hold <= 0:
        return
    if math.isinf(hold):
        print(f"Page: {page.url} stays up; Ctrl-C to end", flush=True)
    else:
        print(f"Page: {page.url} stays up for {hold:g} s (Ctrl-C to end sooner)", flush=True)
    deadline = time.monotonic() + hold
    try:
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
    except KeyboardInterrupt:
        print()  # after the terminal's ^C


def run_demo(
    out: Path,
    limit: int,
    mqtt_host: str,
    mqtt_port: int,
    products: Path,
    ui: bool = True,
    hold: float | None = None,
    product: str = "button",
) -> int:
    out = out.resolve()
    print(f"inspectd demo: {limit} parts of {product} at {LINE_RATE_HZ:g} parts/s -> {out}")
    # The demo owns its output folder: each run starts with fresh parts and files. The state
    # (seq) is kept, as on a real station: seq never goes backwards.
    for old in ("frames", "overlays", "archive"):
        shutil.rmtree(out / old, ignore_errors=True)
    (out / "verdicts.jsonl").unlink(missing_ok=True)
    labels = write_parts(out / "frames", limit)
    with ExitStack() as stack:
        protocol = "5"
        if broker_reachable(mqtt_host, mqtt_port):
            print(f"MQTT: using the broker at {mqtt_host}:{mqtt_port}")
        else:
            broker = start_embedded_broker()
            stack.callback(broker.stop)
            mqtt_host, mqtt_port, protocol = broker.host, broker.port, broker.protocol
            print(
                f"MQTT: no broker answered, started an embedded one at {mqtt_host}:{mqtt_port} "
                f"(MQTT {protocol})"
            )
        config = StationConfig.model_validate(
            {
                "station": {"site": "demo", "line": "line1", "name": "demo1"},
                "product": product,
                "products_dir": str(products),
                "state_dir": str(out / "state"),
                "camera": {
                    "source": "folder",
                    "path": str(out / "frames"),
                    "rate_hz": LINE_RATE_HZ,
                },
                # every part's overlay on MQTT too: the page's live part shows each one
                "mqtt": {
                    "host": mqtt_host,
                    "port": mqtt_port,
                    "protocol": protocol,
                    "overlays": "all",
                },
                "output": {"dir": str(out), "overlays": "all"},
                # every part archived: the page opens any of them and reviews it
                "archive": {"enabled": True, "dir": str(out / "archive"), "ok_every": 1},
            }
        )
        page = start_page(config.topic_base(), mqtt_host, mqtt_port, protocol) if ui else None
        if page is not None:
            stack.callback(page.stop)  # before the broker stops: the stack unwinds last-in first
        gateway = GatewayView(mqtt_host, mqtt_port, protocol, config.topic_base())
        stack.callback(gateway.close)
        gateway.ready.wait(5.0)
        station = Station(config, extra_sinks=[PartPrinter()])
        station.start()
        try:
            stats = station.run(limit=limit)
            _summary(out, labels, stats, gateway)
            if page is not None:
                # the station stays up with the page: its parts can be opened and reviewed
                hold_page(page, hold)
        finally:
            station.stop()
    return 0


def _summary(out: Path, labels: dict[str, str], stats, gateway: GatewayView) -> None:  # noqa: ANN001
    records = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    judged = [r for r in records if r["score"] is not None]
    y = np.array([labels[r["part_id"]] != "good" for r in judged])
    s = np.array([r["score"] for r in judged])
    gateway.wait_for(len(records), timeout=5.0)
    p50, p99 = stats.percentiles(stats.latency_ms)
    counts = {v.value: stats.verdicts.get(v.value, 0) for v in Verdict}
    print()
    print(
        f"Summary: {len(records)} parts  OK {counts['OK']}  NG {counts['NG']}  ERROR "
        f"{counts['ERROR']}"
    )
    print(
        f"  image AUROC on this run: {auroc(y, s):.3f}  ({int(y.sum())} defective, "
        f"{int((~y).sum())} good parts with a score)"
    )
    print(
        f"  latency capture->verdict: p50 {p50:.1f} ms  p99 {p99:.1f} ms  "
        f"({len(records) / stats.seconds:.1f} parts/s)"
    )
    print(
        f"  MQTT: {gateway.verdicts} verdicts and {gateway.rejects} rejects received by the gateway"
    )
    print(f"  files: {out / 'verdicts.jsonl'}, {out / 'overlays'}/")
