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
from inspectd.contract.vocabulary import HealthState
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.reporting import Reporting, Reports
from inspectd.service.threads import ThreadWatch

if TYPE_CHECKING:
    from inspectd.capture.base import CaptureSource
    from inspectd.config import StationConfig
    from inspectd.config.camera import CameraConfig
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


# The order health lists problems in, by the name each component reports under.
PROBLEM_ORDER = (
    "outbox",
    "mqtt",
    "delivery",  # refused by the broker, quarantined
    "triggers",
    "camera",
    "stalls",  # pipeline threads without progress
    "threads",  # watched threads that died
    "archive",
    "drift",
    "thresholds",
)
# …/stats' sections, each a component's stats() (null when it is off)
STATS_SECTIONS = ("outbox", "mqtt", "delivery", "triggers", "commands", "archive", "pictures")


class CameraReport:
    """health's ``camera``: the config's facts, the fps, and what the source reports (an
    isolated source its child process and "offline", a watched folder its counters); a camera
    that failed for good says only that."""

    def __init__(self, cfg: CameraConfig, source: CaptureSource, pipeline: Pipeline) -> None:
        self.cfg, self.source, self.pipeline = cfg, source, pipeline
        self._fps = (time.monotonic(), 0, 0.0)  # (when, frames then, fps)

    def stats(self) -> dict[str, Any]:
        camera = {
            "source": self.cfg.source,
            "state": "ok",
            "trigger": self.cfg.trigger,
            "fps": self._camera_fps(),
            "process": None,
            **self.source.stats(),
        }
        if self.pipeline.stats.capture_failure:  # the run ends
            camera["state"] = "failed"
        return camera

    def problems(self) -> list[str]:
        failure = self.pipeline.stats.capture_failure
        return [f"camera_failed: {failure}"] if failure else self.source.problems()

    def _camera_fps(self) -> float:
        then, frames_then, fps = self._fps
        now, frames = time.monotonic(), self.pipeline.stats.frames
        if now - then >= 1.0:
            fps = (frames - frames_then) / (now - then)
            self._fps = (now, frames, fps)
        return round(fps, 2)


class StallReport:
    """The pipeline's threads without progress for ``stall_s``."""

    def __init__(self, pipeline: Pipeline, stall_s: float) -> None:
        self.pipeline, self.stall_s = pipeline, stall_s

    def stats(self) -> dict[str, Any]:
        return {}

    def problems(self) -> list[str]:
        return [
            f"stalled: {t} thread, no progress for {s:.0f} s"
            for t, s in self.pipeline.stalled(self.stall_s).items()
        ]


class ThresholdReport:
    """health's ``thresholds``; thresholds loaded from fewer good parts than their target
    needs are a problem (a reload refuses them; at start they are said, not kept quiet)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def stats(self) -> dict[str, Any]:
        t = self.pipeline.thresholds
        return {"image": t.image, "pixel": t.pixel, "calibration": t.facts()}

    def problems(self) -> list[str]:
        short = self.pipeline.thresholds.short_of_target()
        return [] if short is None else [f"thresholds: {short}"]


class StationHealth:
    """The health JSON (docs/mqtt.md, …/health) and the …/stats payload of a started station,
    from the components registered by name (``register``; ``inspectd.reporting``), with
    problems in ``PROBLEM_ORDER``. ``metrics_server`` is set once it listens (health.json names
    its port), ``plc`` once the PLC servers listen; ``threads`` watches the long-lived threads.
    The publisher is also kept typed: its PUBACK wait is one of the watchdog's stalls."""

    def __init__(
        self,
        config: StationConfig,
        *,
        boot_id: str,
        pipeline: Pipeline,
        source: CaptureSource,
        publisher: MqttPublisher | None,
        threads: ThreadWatch | None = None,
    ) -> None:
        self.config, self.boot_id, self.pipeline = config, boot_id, pipeline
        self.publisher = publisher
        self.threads = threads if threads is not None else ThreadWatch()
        self.parts = Reports(PROBLEM_ORDER)
        # health's own views of the pipeline, the source and the threads; the components
        # the station starts register themselves (Station.start)
        self.register("camera", CameraReport(config.camera, source, pipeline))
        self.register("stalls", StallReport(pipeline, config.service.stall_s))
        self.register("threads", self.threads)
        self.register("thresholds", ThresholdReport(pipeline))
        self.register("mqtt", publisher)
        self.metrics_server: MetricsServer | None = None
        self.plc: PlcServers | None = None  # set once they listen (docs/plc.md)

    def register(self, name: str, part: Reporting | None) -> None:
        """``part`` reports under ``name`` (None: that component is off)."""
        self.parts.add(name, part)

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
        return self.parts.problems("delivery")

    def held_back(self) -> list[str]:
        """For /healthz: the delivery problems and verdicts the outbox could give no seq
        (ERROR, not published) while the state folder is broken."""
        outbox = self.parts.problems("outbox")
        return self.delivery_problems() + [p for p in outbox if p.startswith("seq_unavailable")]

    def snapshot(self) -> dict[str, Any]:
        # stats() before problems(): a component's problems then agree with what it reported
        parts = self.parts
        outbox, triggers, camera = (
            parts.stats("outbox"),
            parts.stats("triggers"),
            parts.stats("camera"),
        )
        drift = parts.stats("drift") or {"state": "off"}
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
            delivery = parts.stats("delivery")
            if delivery is not None:
                mqtt["refused_waiting"] = delivery["refused_waiting"]
        thresholds = parts.stats("thresholds")
        problems = parts.problems()
        bundle = self.pipeline.bundle
        server = self.metrics_server
        return {
            "state": HealthState.DEGRADED if problems else HealthState.OK,
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
            "thresholds": thresholds,
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
            **{name: self.parts.stats(name) for name in STATS_SECTIONS},
        }
