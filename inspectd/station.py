"""Wires one station from its config: bundle, engine, outbox, camera, MQTT, sinks, pipeline.

Explicit start and stop steps, in order; `inspectd run` and `inspectd demo` both use it, so the
demo shows the daemon's real path.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from inspectd import __version__
from inspectd.archive import ArchiveSink
from inspectd.bundle import Bundle, BundleError, load_bundle
from inspectd.capture import open_source
from inspectd.capture.base import CaptureSource
from inspectd.config import StationConfig
from inspectd.config.station import NAME_PATTERN
from inspectd.delivery import Delivery
from inspectd.drift import DriftMonitor
from inspectd.engine import Engine, EngineError, load_engine
from inspectd.health import HealthMonitor
from inspectd.mqtt.commands import CommandDesk, CommandError
from inspectd.mqtt.publisher import Credentials, MqttPublisher
from inspectd.mqtt.topics import Topics
from inspectd.mqtt.triggers import TriggerDesk
from inspectd.notify import Notifier, ServiceWatch
from inspectd.outbox import Outbox, OutboxError
from inspectd.pipeline import Pipeline, PipelineStats, VerdictSink
from inspectd.reviews import ReviewDesk
from inspectd.sinks import JsonlSink, MqttOverlaySink, OverlaySink, Pictures

if TYPE_CHECKING:
    from inspectd.metrics import MetricsServer, StationMetrics

log = structlog.get_logger(__name__)

# READY=1 waits this long for the first broker connection attempt to end (connected or not):
# a broker outage must not keep the station from inspecting.
FIRST_CONNECT_WAIT_S = 10.0


class StartupError(Exception):
    """A setting that only shows as wrong when used (an unreadable password or TLS file)."""


class Station:
    def __init__(
        self,
        config: StationConfig,
        *,
        extra_sinks: Sequence[VerdictSink] = (),
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.extra_sinks = list(extra_sinks)
        self.notifier = notifier or Notifier()  # systemd's, from `inspectd run`; else silent
        self.watch: ServiceWatch | None = None
        self.metrics: StationMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.boot_id = uuid.uuid4().hex
        self.topics = Topics(config.topic_base())
        self.bundle: Bundle | None = None
        self.engine: Engine | None = None
        self.source: CaptureSource | None = None
        self.outbox: Outbox | None = None
        self.publisher: MqttPublisher | None = None
        self.delivery: Delivery | None = None
        self.triggers: TriggerDesk | None = None
        self.commands: CommandDesk | None = None
        self.health: HealthMonitor | None = None
        self.drift: DriftMonitor | None = None
        self.sinks: list[VerdictSink] = []
        self.archive: ArchiveSink | None = None
        self.pictures: Pictures | None = None
        self.pipeline: Pipeline | None = None
        self._dropped_at_start = 0
        self._fps = (time.monotonic(), 0, 0.0)  # (when, frames then, fps)
        self._switch_lock = threading.Lock()

    def start(self) -> None:
        cfg = self.config
        self.notifier.status(f"loading bundle {cfg.product}")
        self.bundle = load_bundle(cfg.products_dir / cfg.product)
        log.info("bundle.loaded", product=self.bundle.name, model=self.bundle.manifest.model.family,
                 sha256=self.bundle.model_sha256[:12], threshold=self.bundle.thresholds.image)  # fmt: skip
        self.engine = self._load_engine(self.bundle)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = self._open_outbox()
        self._dropped_at_start = sum(self.outbox.stats()["dropped"].values())
        self.notifier.status(f"opening camera ({cfg.camera.source})")
        self.source = open_source(cfg.camera, ledger=self.outbox)  # a watched folder's receipts
        self.source.open()

        if cfg.mqtt.enabled:
            self.publisher = self._make_publisher(self.bundle)
        self.delivery = Delivery(self.outbox, self.publisher, self.topics,
                                 travel_window_s=cfg.mqtt.travel_window_s,
                                 window=cfg.outbox.in_flight)  # fmt: skip
        if self.publisher is not None:
            # First among the sinks: a trigger's answer must not wait for files and overlays
            # (an NG part's overlay render and JPEG encodes took 2-4 ms on the 2-core box)
            self.triggers = TriggerDesk(self.publisher, self.topics,
                                        accepting=cfg.camera.trigger == "mqtt",
                                        max_bytes=cfg.mqtt.trigger_max_bytes)  # fmt: skip
            self.sinks.append(self.triggers)
            self.commands = CommandDesk(
                self.publisher,
                self.topics,
                {"reload_thresholds": self._cmd_reload, "product": self._cmd_product,
                 **ReviewDesk(cfg.archive.dir if cfg.archive.enabled else None).handlers()},
                max_bytes=cfg.mqtt.trigger_max_bytes,
            )
            # only this station's own request topics
            self.publisher.subscribe(self.topics.trigger, self.triggers.on_message,
                                     self.triggers.on_crash)  # fmt: skip
            self.publisher.subscribe(self.topics.cmd_filter, self.commands.on_message,
                                     self.commands.on_crash)  # fmt: skip
        pictures: list[VerdictSink] = []
        if cfg.output.dir is not None:
            if cfg.output.verdicts_jsonl:
                self.sinks.append(JsonlSink(cfg.output.dir / "verdicts.jsonl"))
            if cfg.output.overlays != "none":
                pictures.append(OverlaySink(cfg.output.dir / "overlays", cfg.output.overlays,
                                            cfg.output.jpeg_quality))  # fmt: skip
        if self.publisher is not None:
            if cfg.mqtt.overlays != "none":
                pictures.append(MqttOverlaySink(self.publisher, self.topics.overlay,
                                                cfg.mqtt.overlays, cfg.mqtt.overlay_max_bytes))  # fmt: skip
            self.publisher.start()
        if pictures:
            self.pictures = Pictures(pictures)
            self.sinks.append(self.pictures)
        self.delivery.start()
        if cfg.archive.enabled and cfg.archive.dir is not None:  # last: its PNGs must not delay answers
            self.archive = ArchiveSink(cfg.archive.dir, cfg.archive.max_bytes,
                                       verdicts=cfg.archive.verdicts, ok_every=cfg.archive.ok_every)  # fmt: skip
            self.sinks.append(self.archive)
        if cfg.drift.enabled:
            self.drift = DriftMonitor(self.bundle.thresholds.quantiles, window=cfg.drift.window,
                                      min_parts=cfg.drift.min_parts, alpha=cfg.drift.alpha)  # fmt: skip
            self.sinks.append(self.drift)
        self.sinks.extend(self.extra_sinks)
        self.pipeline = Pipeline(
            source=self.source,
            engine=self.engine,
            bundle=self.bundle,
            station=cfg.station.name,
            recorder=self.delivery,
            sinks=self.sinks,
            max_batch=cfg.engine.max_batch,
            triggers=self.triggers.queue if self.triggers and cfg.camera.trigger == "mqtt" else None,
            grab_timeout_s=getattr(cfg.camera, "timeout_s", 5.0),
        )
        self._serve_metrics()  # before health: health.json names the port
        self.health = HealthMonitor(
            snapshot=self.health_snapshot,
            stats=self.stats_snapshot,
            publisher=self.publisher,
            topics=self.topics,
            path=cfg.state_dir / "health.json",
            interval_s=cfg.mqtt.health_interval_s,
            stats_interval_s=cfg.mqtt.stats_interval_s,
        )
        self.health.start()
        log.info("station.started", station=cfg.station.name, camera=cfg.camera.source,
                 engine=self.engine.name, mqtt=cfg.mqtt.enabled, trigger=cfg.camera.trigger)  # fmt: skip
        self._ready()

    def _load_engine(self, bundle: Bundle) -> Engine:
        cfg = self.config.engine
        # A TensorRT engine built here (first start on a new GPU) takes minutes
        with self.notifier.extending(f"loading engine for {bundle.name}"):
            engine = load_engine(bundle.model_path, backend=cfg.backend, device=cfg.device,
                                 threads=cfg.threads, bundle=bundle, max_batch=cfg.max_batch,
                                 precision=cfg.precision, cuda_graphs=cfg.cuda_graphs,
                                 state_dir=self.config.state_dir)  # fmt: skip
        self.notifier.status(f"warming up engine {engine.name} for {bundle.name}")
        t0 = time.monotonic()
        engine.warmup()
        log.info("engine.warmed_up", engine=engine.name, product=bundle.name,
                 ms=round((time.monotonic() - t0) * 1000.0, 1))  # fmt: skip
        return engine

    # -- service: metrics, readiness, watchdog --------------------------------------------------

    def _serve_metrics(self) -> None:
        m = self.config.metrics
        if not m.enabled:
            return
        from inspectd.metrics import MetricsServer, StationMetrics  # prometheus_client: only here

        assert self.pipeline is not None
        self.metrics = StationMetrics(health=self.health_snapshot, stats=self.pipeline.stats,
                                      stalled=self.stalled, product=self.pipeline.bundle.name)  # fmt: skip
        self.pipeline.observer = self.metrics.observe  # every part from the first one on
        try:
            self.metrics_server = MetricsServer(self.metrics, host=m.listen, port=m.port,
                                                stalled=self.stalled)  # fmt: skip
        except OSError as exc:
            raise StartupError(f"metrics: cannot listen on {m.listen} port {m.port}: "
                               f"{exc.strerror or exc}") from exc  # fmt: skip
        self.metrics_server.start()

    def _ready(self) -> None:
        """READY=1 once the first broker connection attempt ended (connected or not), then the
        watchdog and STATUS= loop."""
        if self.publisher is not None:
            m = self.config.mqtt
            self.notifier.status(f"connecting to MQTT broker {m.host}:{m.port}")
            if not self.publisher.wait_connect_attempt(FIRST_CONNECT_WAIT_S):
                log.warning("mqtt.first_attempt_pending", host=m.host, port=m.port,
                            waited_s=FIRST_CONNECT_WAIT_S, detail="ready anyway; verdicts wait in the outbox")  # fmt: skip
        self.notifier.ready(self.service_status())
        self.watch = ServiceWatch(self.notifier, stalled=self.stalled, status=self.service_status,
                                  status_interval_s=self.config.service.status_interval_s)  # fmt: skip
        self.watch.start()
        log.info("station.ready", notify=self.notifier.enabled,
                 watchdog_interval_s=self.notifier.watchdog_interval_s)  # fmt: skip

    def stalled(self) -> dict[str, float]:
        """What holds work without progress: pipeline threads for service.stall_s, and "mqtt"
        when the publisher is connected with messages waiting and no PUBACK for
        mqtt.ack_timeout_s: name -> seconds (the watchdog and /healthz)."""
        stalls = self.pipeline_stalled()
        ack_wait = self.publisher_stalled()
        if ack_wait is not None:
            stalls["mqtt"] = ack_wait
        return stalls

    def pipeline_stalled(self) -> dict[str, float]:
        if self.pipeline is None:
            return {}
        return self.pipeline.stalled(self.config.service.stall_s)

    def publisher_stalled(self) -> float | None:
        """Seconds without a PUBACK while connected and waiting for one, once that is over
        mqtt.ack_timeout_s; else None. A publisher whose network thread died (issue 15: an
        exception out of a paho callback) or a broker that stopped reading keeps the TCP
        connection, so neither health's "connected" nor the broker's Last Will shows it."""
        if self.publisher is None:
            return None
        waited = self.publisher.ack_wait_s()
        return round(waited, 1) if waited > self.config.mqtt.ack_timeout_s else None

    def service_status(self) -> str:
        """The STATUS= line systemctl status shows while inspecting."""
        assert self.pipeline is not None
        h = self.health_snapshot()
        v = self.pipeline.stats.verdicts
        mqtt = "mqtt off" if not h["mqtt"]["enabled"] else (
            "mqtt connected" if h["mqtt"].get("connected") else "mqtt disconnected")  # fmt: skip
        line = (f"inspecting {h['product']}: {sum(v.values())} parts (OK {v['OK']}, NG {v['NG']}, "
                f"ERROR {v['ERROR']}), {h['camera']['fps']:.1f} fps, {mqtt}, "
                f"outbox {h['outbox']['depth']}")  # fmt: skip
        if h["problems"]:
            line += f"; {h['problems'][0]}"
        return line

    def _open_outbox(self) -> Outbox:
        cfg = self.config
        path = cfg.state_dir / "outbox.db"
        bounds = {"max_rows": cfg.outbox.max_rows, "max_age_s": cfg.outbox.max_age_s}
        try:
            return Outbox(path, sync=cfg.outbox.sync, **bounds)
        except OutboxError as exc:
            # Verdicts still go out where the broker is up, marked not durable; health says why.
            return Outbox.in_memory(path, str(exc), **bounds)

    def _make_publisher(self, bundle: Bundle) -> MqttPublisher:
        m = self.config.mqtt
        password = m.password
        if m.password_file is not None:
            try:
                password = m.password_file.read_text(encoding="utf-8").splitlines()[0]
            except (OSError, UnicodeDecodeError, IndexError) as exc:
                raise StartupError(f"mqtt.password_file {m.password_file}: cannot read a password "
                                   f"from it ({exc or 'empty file'})") from exc  # fmt: skip
        tls = m.tls
        credentials = Credentials(
            username=m.username,
            password=password,
            ca_file=str(tls.ca_file) if tls else None,
            cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
            key_file=str(tls.key_file) if tls and tls.key_file else None,
        )
        try:
            return MqttPublisher(
                host=m.host,
                port=m.port,
                protocol=m.protocol,
                client_id=m.client_id or f"inspectd-{self.config.station.name}",
                keepalive_s=m.keepalive_s,
                topics=self.topics,
                status_fields={
                    "boot_id": self.boot_id,
                    "version": __version__,
                    "product": bundle.name,
                    "model_sha256": bundle.model_sha256,
                },
                credentials=credentials,
            )
        except ValueError as exc:
            raise StartupError(f"mqtt.tls: {exc}") from exc

    def run(self, *, limit: int | None = None, stop: threading.Event | None = None) -> PipelineStats:
        if self.pipeline is None:
            raise RuntimeError("Station.start() first")
        return self.pipeline.run(limit=limit, stop=stop)

    # -- commands and reload --------------------------------------------------------------------

    def reload_thresholds(self) -> dict[str, Any]:
        """Read the bundle's thresholds again (SIGHUP, the reload command); the model must be
        the one running."""
        assert self.pipeline is not None
        with self._switch_lock:
            current = self.pipeline.bundle
            try:
                fresh = load_bundle(self.config.products_dir / current.name)
            except BundleError as exc:
                raise CommandError(f"thresholds not reloaded: {exc}") from exc
            if fresh.model_sha256 != current.model_sha256:
                raise CommandError(
                    f"thresholds not reloaded: the model of {current.name} changed on disk "
                    f"({fresh.model_sha256[:12]}…, running {current.model_sha256[:12]}…); "
                    "switch product or restart to load it"
                )
            old = self.pipeline.thresholds
            self.pipeline.thresholds = fresh.thresholds
            if self.drift is not None:
                self.drift.reset(fresh.thresholds.quantiles)
        result = {"product": current.name, "image": fresh.thresholds.image,
                  "previous_image": old.image, "pixel": fresh.thresholds.pixel}  # fmt: skip
        log.info("thresholds.reloaded", **result)
        return result

    def _cmd_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise CommandError(f"reload_thresholds takes no arguments, got {sorted(args)}")
        return self.reload_thresholds()

    def _cmd_product(self, args: dict[str, Any]) -> dict[str, Any]:
        name = args.get("product")
        if set(args) != {"product"} or not isinstance(name, str) or not re.match(NAME_PATTERN, name):
            raise CommandError('expected {"product": "<bundle name>"} (letters, digits, _ and -)')
        assert self.pipeline is not None
        with self._switch_lock:
            try:
                bundle = load_bundle(self.config.products_dir / name)
            except BundleError as exc:
                raise CommandError(f"product not switched: {exc}") from exc
            try:
                engine = self._load_engine(bundle)
            except EngineError as exc:  # e.g. a bundle without model.pt on the torch backend
                raise CommandError(f"product not switched: {exc}") from exc
            previous = self.pipeline.bundle.name
            self.pipeline.swap_product(bundle, engine)
            if self.drift is not None:
                self.drift.reset(bundle.thresholds.quantiles)
        if self.publisher is not None:
            self.publisher.set_status_fields(product=bundle.name, model_sha256=bundle.model_sha256)
        return {"product": bundle.name, "previous": previous, "model_sha256": bundle.model_sha256}

    # -- health ---------------------------------------------------------------------------------

    def health_snapshot(self) -> dict[str, Any]:
        assert self.outbox is not None and self.pipeline is not None
        problems: list[str] = []
        outbox = self.outbox.stats()
        if not outbox["durable"]:
            problems.append(f"outbox_not_durable: {outbox['error']}")
        dropped = sum(outbox["dropped"].values()) - self._dropped_at_start
        if dropped > 0:
            problems.append(f"outbox_dropped: {dropped} verdicts since start ({outbox['dropped']})")
        mqtt: dict[str, Any] = {"enabled": self.publisher is not None}
        if self.publisher is not None:
            p = self.publisher.stats()
            ack_wait = self.publisher_stalled()
            mqtt.update(connected=p["connected"], error=p["error"], stalled=ack_wait is not None,
                        awaiting_ack=p["awaiting_ack"], handler_errors=p["handler_errors"])  # fmt: skip
            if not p["connected"]:
                problems.append(f"mqtt_disconnected: {p['error'] or 'connecting'}")
            elif ack_wait is not None:
                problems.append(f"mqtt_stalled: {p['awaiting_ack']} messages wait for the broker's "
                                f"PUBACK, none for {ack_wait:.0f} s (mqtt.ack_timeout_s "
                                f"{self.config.mqtt.ack_timeout_s:g}); watchdog pings withheld")  # fmt: skip
        triggers = self.triggers.stats() if self.triggers is not None else None
        if triggers is not None and triggers["overload"] is not None:
            o = triggers["overload"]
            problems.append(f"trigger_overloaded: {o['refused']} requests refused in {o['since_s']:.0f} s, "
                            f"{triggers['queue_max']} already waiting for the camera")  # fmt: skip
        stats = self.pipeline.stats
        camera_state = "failed" if stats.capture_failure else "ok"
        if stats.capture_failure:
            problems.append(f"camera_failed: {stats.capture_failure}")
        isolated = getattr(self.source, "state", None)  # IsolatedSource: a watched child process
        camera_process = isolated() if callable(isolated) else None
        if camera_process is not None and camera_process["state"] != "online" and not stats.capture_failure:
            camera_state = "offline"
            problems.append(f"camera_offline: {camera_process['reason'] or camera_process['state']}")
        problems += [f"stalled: {t} thread, no progress for {s:.0f} s" for t, s in self.pipeline_stalled().items()]
        archive = self.archive.stats() if self.archive is not None else None
        if archive is not None and archive["failing"]:
            problems.append(f"archive_failing: {archive['errors']} errors since start, last: {archive['last_error']}")
        drift = self.drift.state() if self.drift is not None else {"state": "off"}
        problems += [f"drift: {p}" for p in drift.get("problems", [])]
        bundle = self.pipeline.bundle
        return {
            "state": "ok" if not problems else "degraded",
            "problems": problems,
            "station": self.config.station.name,
            "boot_id": self.boot_id,
            "version": __version__,
            "product": bundle.name,
            "model_sha256": bundle.model_sha256,
            "engine": self.pipeline.engine.name,
            "camera": {"source": self.config.camera.source, "state": camera_state,
                       "trigger": self.config.camera.trigger, "fps": self._camera_fps(),
                       "process": camera_process},  # fmt: skip
            "thresholds": {"image": self.pipeline.thresholds.image,
                           "pixel": self.pipeline.thresholds.pixel,
                           "calibration": self.pipeline.thresholds.facts()},  # fmt: skip
            "mqtt": mqtt,
            "triggers": triggers,
            "outbox": outbox,
            "drift": drift,
            "metrics": {"url": self.metrics_server.url, "port": self.metrics_server.port}
            if self.metrics_server is not None else None,  # fmt: skip
        }

    def _camera_fps(self) -> float:
        assert self.pipeline is not None
        then, frames_then, fps = self._fps
        now, frames = time.monotonic(), self.pipeline.stats.frames
        if now - then >= 1.0:
            fps = (frames - frames_then) / (now - then)
            self._fps = (now, frames, fps)
        return round(fps, 2)

    def stats_snapshot(self) -> dict[str, Any]:
        assert self.pipeline is not None and self.outbox is not None
        stats = self.pipeline.stats
        p50, p99 = stats.percentiles(stats.latency_ms)
        return {
            "station": self.config.station.name,
            "verdicts": dict(stats.verdicts),
            "latency_ms": {"p50": round(p50, 2), "p99": round(p99, 2)},
            "stage_ms_p50": {s: round(stats.percentiles(v)[0], 3) for s, v in stats.stage_ms.items() if v},
            "sink_errors": stats.sink_errors,
            "outbox": self.outbox.stats(),
            "mqtt": self.publisher.stats() if self.publisher else None,
            "triggers": self.triggers.stats() if self.triggers else None,
            "commands": self.commands.stats() if self.commands else None,
            "archive": self.archive.stats() if self.archive is not None else None,
            "pictures": self.pictures.stats() if self.pictures is not None else None,
        }

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, drain_timeout: float | None = None) -> None:
        """Close in reverse order of start; MQTT last, after the outbox drained."""
        if drain_timeout is None:
            drain_timeout = self.config.mqtt.drain_timeout_s
        self.notifier.stopping("stopping: closing sinks and camera")
        if self.commands is not None:
            self.commands.close()
        for sink in self.sinks:
            try:
                sink.close()  # the trigger desk answers requests that were never inspected
            except Exception:
                log.exception("sink.close_failed", sink=type(sink).__name__)
        if self.source is not None:
            self.source.close()
        if self.health is not None:
            self.health.stop()
            self.health.check(force=True)  # the last word, before the broker connection ends
        if self.delivery is not None:
            if self.publisher is not None and self.outbox is not None:
                depth = self.outbox.stats()["depth"]
                self.notifier.status(f"draining outbox: {depth} verdicts to the broker "
                                     f"(at most {drain_timeout:g} s)")  # fmt: skip
            if self.publisher is not None and not self.delivery.drain(drain_timeout):
                assert self.outbox is not None
                log.error("outbox.not_drained_at_stop", timeout_s=drain_timeout,
                          detail="published again at the next start", **self.outbox.stats())  # fmt: skip
            self.delivery.close()
        if self.publisher is not None:
            self.publisher.stop(timeout=min(drain_timeout, 5.0) or 1.0)
        if self.outbox is not None:
            self.outbox.close()  # a clean stop leaves no gap in seq
        if self.pipeline is not None:
            self.pipeline.close()
        elif self.engine is not None:
            self.engine.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.watch is not None:
            self.watch.stop()
        self.notifier.status("stopped")
        log.info("station.stopped")
