"""The station's health: ``StationHealth`` combines the components' reports into the health
JSON and the stats; ``HealthMonitor`` publishes them: …/health (retained, on every change and
every interval), …/stats (periodic, QoS 0), and ``state_dir/health.json`` for whoever cannot
reach the broker (a broker that refuses our password is exactly when an operator needs to read
why)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from inspectd import __version__
from inspectd.contract.messages import encode_json, health_message, stats_message
from inspectd.contract.topics import Topics
from inspectd.contract.verdict import iso_utc
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.service.threads import ThreadWatch

if TYPE_CHECKING:
    from inspectd.capture.base import CaptureSource
    from inspectd.config import StationConfig
    from inspectd.delivery import Delivery
    from inspectd.drift import DriftMonitor
    from inspectd.mqtt.commands import CommandDesk
    from inspectd.mqtt.triggers import TriggerDesk
    from inspectd.outbox import Outbox
    from inspectd.outputs.archive import ArchiveSink
    from inspectd.outputs.sinks import Pictures
    from inspectd.pipeline import Pipeline
    from inspectd.plc.servers import PlcServers
    from inspectd.service.metrics_http import MetricsServer

log = structlog.get_logger(__name__)

# What makes a health message "changed": fps, depths and drop counts move all the time, so
# problems are compared without their numbers.
_KEYS = ("state", "product", "model_sha256")
_NUMBERS = re.compile(r"\d+(\.\d+)?")


class HealthMonitor:
    def __init__(
        self,
        *,
        snapshot: Callable[[], dict[str, Any]],
        stats: Callable[[], dict[str, Any]],
        publisher: MqttPublisher | None,
        topics: Topics,
        path: Path,
        interval_s: float,
        stats_interval_s: float,
        tick_s: float = 1.0,
    ) -> None:
        self.snapshot, self.stats = snapshot, stats
        self.publisher, self.topics, self.path = publisher, topics, path
        self.interval_s, self.stats_interval_s, self.tick_s = interval_s, stats_interval_s, tick_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._last_key: tuple[Any, ...] | None = None
        self._was_connected = False
        self.last: dict[str, Any] = {}

    def start(self) -> None:
        self.check(force=True)
        self._thread.start()

    def threads(self) -> dict[str, threading.Thread | None]:
        return {"health": self._thread}

    def check(self, *, force: bool = False) -> dict[str, Any]:
        """Take a snapshot; publish and write it when it changed (or ``force``)."""
        # connected first: a snapshot taken before the connection came up must not go out
        connected = self.publisher is not None and self.publisher.connected
        health = {**self.snapshot(), "ts": iso_utc(time.time())}
        key = (
            *(json.dumps(health.get(k), sort_keys=True) for k in _KEYS),
            tuple(_NUMBERS.sub("#", p) for p in health.get("problems", [])),
        )
        if not self._was_connected and connected:
            force = True  # a new connection gets the current health, not the last one sent
        self._was_connected = connected
        if force or key != self._last_key:
            if self._last_key is not None and key != self._last_key:
                (log.warning if health["state"] != "ok" else log.info)(
                    "health.changed", state=health["state"], problems=health["problems"]
                )
            self._last_key = key
            self._emit(health, publish=connected)
        self.last = health
        return health

    def _emit(self, health: dict[str, Any], *, publish: bool) -> None:
        payload = encode_json(health)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(payload + b"\n")
            os.replace(tmp, self.path)
        except OSError as exc:  # the state folder may be the very problem
            log.debug("health.file_not_written", path=str(self.path), error=str(exc))
            try:
                tmp.unlink(missing_ok=True)  # a full disk left a 0-byte .tmp behind otherwise
            except OSError:
                pass
        # Retained: only the latest matters, so none pile up in memory during an outage. Only a
        # snapshot taken while connected goes out: one from before the connection came up
        # would say "disconnected" to the broker; the reconnect forces a fresh one instead.
        if publish and self.publisher is not None and self.publisher.connected:
            self.publisher.enqueue(health_message(self.topics, payload))

    def _run(self) -> None:
        now = time.monotonic()
        next_health, next_stats = now + self.interval_s, now + self.stats_interval_s
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            try:
                due = now >= next_health
                self.check(force=due)
                if due:
                    next_health = now + self.interval_s
                if now >= next_stats and self.publisher is not None:
                    next_stats = now + self.stats_interval_s
                    stats = {**self.stats(), "ts": iso_utc(time.time())}
                    self.publisher.enqueue(stats_message(self.topics, stats))
            except Exception:  # health must never take the station down
                log.exception("health.failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


class StationHealth:
    """The health JSON (docs/mqtt.md, …/health) and the …/stats payload of a started station,
    combined from its components' ``stats()`` and ``problems()`` (``inspectd.reporting``).
    Problems come in a fixed order: outbox, MQTT, delivery (refused, quarantined), triggers,
    camera, stalled threads, dead threads, archive, drift. ``metrics_server`` is set once it
    listens (health.json names its port); ``threads`` watches the long-lived threads."""

    def __init__(
        self,
        config: StationConfig,
        *,
        boot_id: str,
        pipeline: Pipeline,
        source: CaptureSource,
        outbox: Outbox,
        publisher: MqttPublisher | None,
        triggers: TriggerDesk | None,
        commands: CommandDesk | None,
        archive: ArchiveSink | None,
        pictures: Pictures | None,
        drift: DriftMonitor | None,
        delivery: Delivery | None = None,
        threads: ThreadWatch | None = None,
    ) -> None:
        self.config, self.boot_id, self.pipeline, self.source = config, boot_id, pipeline, source
        self.delivery = delivery
        self.threads = threads if threads is not None else ThreadWatch()
        self.outbox, self.publisher, self.triggers, self.commands = (
            outbox,
            publisher,
            triggers,
            commands,
        )
        self.archive, self.pictures, self.drift = archive, pictures, drift
        self.metrics_server: MetricsServer | None = None
        self.plc: PlcServers | None = None  # set once they listen (docs/plc.md)
        self._fps = (time.monotonic(), 0, 0.0)  # (when, frames then, fps)

    def stalled(self) -> dict[str, float]:
        """What holds work without progress: pipeline threads for service.stall_s, "mqtt"
        when the publisher is connected with messages waiting and no PUBACK for
        mqtt.ack_timeout_s, and every watched thread that died (seconds since): name ->
        seconds (the watchdog and /healthz)."""
        stalls = self.pipeline.stalled(self.config.service.stall_s)
        ack_wait = self.publisher.stalled_s() if self.publisher is not None else None
        if ack_wait is not None:
            stalls["mqtt"] = ack_wait
        return {**stalls, **self.threads.dead()}

    def delivery_problems(self) -> list[str]:
        """Verdicts held back while the station is up (refused by the broker, quarantined):
        /healthz says "degraded" for these, since nothing else shows them and a restart
        would not help."""
        return self.delivery.problems() if self.delivery is not None else []

    def held_back(self) -> list[str]:
        """For /healthz: the delivery problems and verdicts the outbox could give no seq
        (ERROR, not published) while the state folder is broken."""
        unsequenced = [p for p in self.outbox.problems() if p.startswith("seq_unavailable")]
        return self.delivery_problems() + unsequenced

    def snapshot(self) -> dict[str, Any]:
        # stats() before problems(): a component's problems then agree with what it reported
        outbox = self.outbox.stats()
        problems = self.outbox.problems()
        mqtt: dict[str, Any] = {"enabled": self.publisher is not None}
        if self.publisher is not None:
            p = self.publisher.stats()
            mqtt.update(
                connected=p["connected"],
                error=p["error"],
                stalled=self.publisher.stalled_s() is not None,
                awaiting_ack=p["awaiting_ack"],
                handler_errors=p["handler_errors"],
            )
            if self.delivery is not None:
                mqtt["refused_waiting"] = self.delivery.stats()["refused_waiting"]
            problems += self.publisher.problems()
        problems += self.delivery_problems()
        triggers = self.triggers.stats() if self.triggers is not None else None
        if self.triggers is not None:
            problems += self.triggers.problems()
        camera, camera_problems = self._camera()
        problems += camera_problems
        problems += [
            f"stalled: {t} thread, no progress for {s:.0f} s"
            for t, s in self.pipeline.stalled(self.config.service.stall_s).items()
        ]
        problems += self.threads.problems()
        if self.archive is not None:
            problems += self.archive.problems()
        drift = self.drift.stats() if self.drift is not None else {"state": "off"}
        if self.drift is not None:
            problems += self.drift.problems()
        bundle, thresholds = self.pipeline.bundle, self.pipeline.thresholds
        short = thresholds.short_of_target()
        if short is not None:  # loaded at start (a reload refuses them): said, not kept quiet
            problems.append(f"thresholds: {short}")
        server = self.metrics_server
        return {
            "state": "ok" if not problems else "degraded",
            "problems": problems,
            "station": self.config.station.name,
            "boot_id": self.boot_id,
            "version": __version__,
            "product": bundle.name,
            "product_version": bundle.version,
            "model_sha256": bundle.model_sha256,
            # when the next one is due at the latest: a reader can tell a station gone quiet
            # (hung, its broker connection kept alive) from one with nothing new to say
            "interval_s": self.config.mqtt.health_interval_s,
            "engine": self.pipeline.engine.name,
            "camera": camera,
            "thresholds": {
                "image": thresholds.image,
                "pixel": thresholds.pixel,
                "calibration": thresholds.facts(),
            },
            "mqtt": mqtt,
            "triggers": triggers,
            "outbox": outbox,
            "drift": drift,
            "metrics": {"url": server.url, "port": server.port} if server is not None else None,
            "plc": self.plc.stats() if self.plc is not None else None,
        }

    def status_line(self) -> str:
        """The STATUS= line systemctl status shows while inspecting."""
        h = self.snapshot()
        v = self.pipeline.stats.verdicts
        mqtt = (
            "mqtt off"
            if not h["mqtt"]["enabled"]
            else ("mqtt connected" if h["mqtt"].get("connected") else "mqtt disconnected")
        )
        line = (
            f"inspecting {h['product']}: {sum(v.values())} parts (OK {v['OK']}, NG {v['NG']}, "
            f"ERROR {v['ERROR']}), {h['camera']['fps']:.1f} fps, {mqtt}, "
            f"outbox {h['outbox']['depth']}"
        )
        if h["problems"]:
            line += f"; {h['problems'][0]}"
        return line

    def _camera(self) -> tuple[dict[str, Any], list[str]]:
        """health's ``camera``: the config's facts, the fps, and what the source reports
        (an isolated source its child process and "offline", a watched folder its counters)."""
        cfg = self.config.camera
        camera = {
            "source": cfg.source,
            "state": "ok",
            "trigger": cfg.trigger,
            "fps": self._camera_fps(),
            "process": None,
            **self.source.stats(),
        }
        failure = self.pipeline.stats.capture_failure
        if failure:  # the camera failed for good (the run ends): that says it all
            camera["state"] = "failed"
            return camera, [f"camera_failed: {failure}"]
        return camera, self.source.problems()

    def _camera_fps(self) -> float:
        then, frames_then, fps = self._fps
        now, frames = time.monotonic(), self.pipeline.stats.frames
        if now - then >= 1.0:
            fps = (frames - frames_then) / (now - then)
            self._fps = (now, frames, fps)
        return round(fps, 2)

    def stats(self) -> dict[str, Any]:
        """The …/stats payload."""
        stats = self.pipeline.stats
        p50, p99 = stats.percentiles(stats.latency_ms)
        return {
            "station": self.config.station.name,
            "verdicts": dict(stats.verdicts),
            "last_hour": stats.last_hour.snapshot(),
            "latency_ms": {"p50": round(p50, 2), "p99": round(p99, 2)},
            "stage_ms_p50": {
                s: round(stats.percentiles(v)[0], 3) for s, v in stats.stage_ms.items() if v
            },
            "sink_errors": stats.sink_errors,
            "outbox": self.outbox.stats(),
            "mqtt": self.publisher.stats() if self.publisher else None,
            "delivery": self.delivery.stats() if self.delivery and self.publisher else None,
            "triggers": self.triggers.stats() if self.triggers else None,
            "commands": self.commands.stats() if self.commands else None,
            "archive": self.archive.stats() if self.archive is not None else None,
            "pictures": self.pictures.stats() if self.pictures is not None else None,
        }
