"""Wires one station from its config: bundle, engine, outbox, camera, MQTT, sinks, pipeline.

``start()`` is a sequence of named steps; each returns what it made and registers its closer on
one of three ``ExitStack``s, so ``stop()`` closes everything in reverse order of start, also
after a start that failed half-way. Three, closed one after the other, because the stop has
phases that cut across the start order:

1. ``_line``: camera, trigger and command desks, sinks: what takes parts in and answers them.
   Closed first, though opened in the middle of start: what they publish on the way out (the
   trigger desk answers requests never inspected) must still reach the drain below, and the
   last health message must see the camera closed.
2. ``_core``: engine, outbox, publisher, delivery, health: the last health message, then the
   outbox drains to the broker, ``stopped`` is published, the outbox and the engine close.
3. ``_service``: the metrics HTTP server and the watchdog: they outlive the drain (which may
   take ``mqtt.drain_timeout_s``), so /healthz answers and systemd's watchdog keeps getting
   pings meanwhile.

Every component that says which long-lived threads it runs (``Threaded``) is watched once
started: a thread that dies is a health problem and withholds the watchdog pings, as a stall
does (``inspectd.service.threads``).

``inspectd run`` and ``inspectd demo`` both use it, so the demo shows the daemon's real path.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import structlog

from inspectd import __version__
from inspectd.archived_parts import part_view
from inspectd.bundle import Bundle, load_bundle
from inspectd.capture import open_source
from inspectd.capture.base import CaptureSource
from inspectd.config import StationConfig
from inspectd.contract.topics import Topics
from inspectd.delivery import Delivery
from inspectd.drift import DriftMonitor
from inspectd.engine import Engine, load_engine
from inspectd.engine.slowed import slowed_if_asked
from inspectd.inspection import PipelineStats, VerdictSink
from inspectd.mqtt import login
from inspectd.mqtt.commands import CommandDesk
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.mqtt.triggers import TriggerDesk
from inspectd.outbox import Outbox, OutboxError
from inspectd.outputs.archive import ArchiveSink
from inspectd.outputs.sinks import JsonlSink, MqttOverlaySink, OverlaySink, Pictures
from inspectd.pipeline import Pipeline, Recorder
from inspectd.plc.handshake import Handshake, SettlingRecorder
from inspectd.reviews import ReviewDesk
from inspectd.service.control import ProductControl
from inspectd.service.health import HealthMonitor, StationHealth
from inspectd.service.sd_notify import Notifier, ServiceWatch
from inspectd.service.teaching import TeachDesk
from inspectd.service.threads import Threaded, ThreadWatch

if TYPE_CHECKING:
    from inspectd.plc.servers import PlcServers
    from inspectd.service.metrics_http import MetricsServer, StationMetrics

log = structlog.get_logger(__name__)

# READY=1 waits this long for the first broker connection attempt to end (connected or not):
# a broker outage must not keep the station from inspecting.
FIRST_CONNECT_WAIT_S = 10.0


class StartupError(Exception):
    """A setting that only shows as wrong when used (an unreadable password or TLS file)."""


class Station:
    """One station. The attributes below are set by ``start()``, step by step (None before,
    and those of a component the config turns off stay None)."""

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
        self.boot_id = uuid.uuid4().hex
        self.topics = Topics(config.topic_base())
        self.outbox: Outbox | None = None
        self.source: CaptureSource | None = None
        self.publisher: MqttPublisher | None = None
        self.delivery: Delivery | None = None
        self.handshake: Handshake | None = None  # with a triggered camera
        self.triggers: TriggerDesk | None = None
        self.plc: PlcServers | None = None
        self.commands: CommandDesk | None = None
        self.sinks: list[VerdictSink] = []  # in the pipeline's order
        self.pictures: Pictures | None = None
        self.archive: ArchiveSink | None = None
        self.drift: DriftMonitor | None = None
        self.pipeline: Pipeline | None = None
        self.report: StationHealth | None = None  # health and stats from the components
        self.metrics: StationMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.health: HealthMonitor | None = None
        self.watch: ServiceWatch | None = None  # set once READY=1 was sent
        self.threads = ThreadWatch()  # the long-lived threads of the components
        self._line, self._core, self._service = ExitStack(), ExitStack(), ExitStack()
        self._drain_timeout = config.mqtt.drain_timeout_s  # stop()'s, for the closers
        # the reload and the product switch (docs: service/control.py), attached at start
        self.control = ProductControl(config.products_dir, self._load_engine)

    # -- start: one step per component, each registering its closer -----------------------------

    def start(self) -> None:
        cfg = self.config
        bundle = self._load_bundle()
        if cfg.camera.trigger != "free_run":
            # before the engine loads: a PLC finds the servers listening from the start, with
            # Ready 0 and triggers answered not_ready until the station has started
            self.handshake = Handshake(starting=f"loading the engine for {bundle.name}")
            self.plc = self._start_plc(self.handshake)
        engine = self._start_engine(bundle)
        self.outbox = self._open_outbox()
        if self.handshake is not None:
            self.handshake.set_starting(f"opening the camera ({cfg.camera.source})")
        self.source = self._open_camera(self.outbox)
        self.publisher = self._make_publisher(bundle)
        self.delivery = self._make_delivery(self.outbox, self.publisher)
        self._close_sinks_at_stop()
        if self.handshake is not None:
            # First among the sinks: a trigger's answer must not wait for files and overlays
            self.sinks.append(self.handshake)
            # Ready (engine warm, camera open) before MQTT connects: from here on a trigger
            # waits in the queue for the pipeline, taken while the camera is online
            self.handshake.started(offline=self.source.offline)
            if self.plc is not None:
                self.plc.link.changed()
        if self.publisher is not None:
            self.triggers = self._open_triggers(self.publisher)
            self.commands = self._open_commands(self.publisher)
        jsonl, self.pictures = self._make_outputs(self.publisher)
        self._connect(self.publisher, self.delivery)
        self.sinks += [s for s in (jsonl, self.pictures) if s is not None]
        self.archive = self._make_archive()  # last: its PNGs must not delay answers
        if self.archive is not None:
            self.sinks.append(self.archive)
        self.drift = self._make_drift(bundle)
        if self.drift is not None:
            self.sinks.append(self.drift)
        self.sinks.extend(self.extra_sinks)
        self.pipeline = self._make_pipeline(bundle, engine, self.source, self.delivery)
        self.control.attach(
            self.pipeline, handshake=self.handshake, drift=self.drift, publisher=self.publisher
        )
        self.report = StationHealth(
            cfg,
            boot_id=self.boot_id,
            pipeline=self.pipeline,
            source=self.source,
            publisher=self.publisher,
            threads=self.threads,
        )
        for name, part in (
            ("outbox", self.outbox),
            ("delivery", self.delivery if self.publisher is not None else None),
            ("triggers", self.triggers),
            ("commands", self.commands),
            ("archive", self.archive),
            ("pictures", self.pictures),
            ("drift", self.drift),
        ):
            self.report.register(name, part)
        # before health: health.json names the port
        self.metrics_server = self.report.metrics_server = self._serve_metrics(
            self.pipeline, self.report
        )
        self.report.plc = self.plc  # before health: it names their ports
        self.health = self._start_health(self.report)
        self._watch_threads()
        log.info(
            "station.started",
            station=cfg.station.name,
            camera=cfg.camera.source,
            engine=engine.name,
            mqtt=cfg.mqtt.enabled,
            trigger=cfg.camera.trigger,
        )
        self.watch = self._ready()

    def _watch_threads(self) -> None:
        """Every started component that names its long-lived threads (``Threaded``)."""
        components: tuple[object, ...] = (
            self.outbox,
            self.source,
            self.publisher,
            self.delivery,
            self.commands,
            self.pictures,
            self.archive,
            self.metrics_server,
            self.health,
            self.handshake,
            self.plc,
        )
        for component in components:
            if isinstance(component, Threaded):
                self.threads.watch(component)
        log.info("threads.watched", threads=self.threads.names())

    def _load_bundle(self) -> Bundle:
        cfg = self.config
        self.notifier.status(f"loading bundle {cfg.product}")
        bundle = load_bundle(cfg.products_dir / cfg.product)
        log.info(
            "bundle.loaded",
            product=bundle.name,
            version=bundle.version,
            model=bundle.manifest.model.family,
            sha256=bundle.model_sha256[:12],
            threshold=bundle.thresholds.image,
        )
        return bundle

    def _start_engine(self, bundle: Bundle) -> Engine:
        engine = self._load_engine(bundle)

        def close() -> None:  # the pipeline's engine, once there is one: it may have switched
            (self.pipeline or engine).close()

        self._core.callback(close)
        return engine

    def _open_outbox(self) -> Outbox:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        path = cfg.state_dir / "outbox.db"
        bounds: dict[str, Any] = {
            "max_rows": cfg.outbox.max_rows,
            "max_age_s": cfg.outbox.max_age_s,
        }
        try:
            outbox = Outbox(path, sync=cfg.outbox.sync, **bounds)
        except OutboxError as exc:
            # Verdicts still go out where the broker is up, marked not durable; health says why.
            outbox = Outbox.in_memory(path, str(exc), **bounds)
        self._core.callback(outbox.close)  # a clean stop leaves no gap in seq
        return outbox

    def _open_camera(self, outbox: Outbox) -> CaptureSource:
        self.notifier.status(f"opening camera ({self.config.camera.source})")
        source = open_source(self.config.camera, ledger=outbox)  # a watched folder's receipts
        self._line.callback(source.close)  # also after a failed open: a child may need ending
        source.open()
        return source

    def _make_publisher(self, bundle: Bundle) -> MqttPublisher | None:
        """The client, not connected yet (``_connect``); None with MQTT off."""
        m = self.config.mqtt
        if not m.enabled:
            return None
        try:
            credentials = login.credentials(
                m.username, password=m.password, password_file=m.password_file, tls=m.tls
            )
            publisher = MqttPublisher(
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
                ack_timeout_s=m.ack_timeout_s,
            )
        except login.LoginError as exc:
            raise StartupError(str(exc)) from exc
        # after the drain: publishes "stopped" and disconnects cleanly (no Last Will)
        self._core.callback(lambda: publisher.stop(timeout=min(self._drain_timeout, 5.0) or 1.0))
        return publisher

    def _make_delivery(self, outbox: Outbox, publisher: MqttPublisher | None) -> Delivery:
        cfg = self.config
        delivery = Delivery(
            outbox,
            publisher,
            self.topics,
            travel_window_s=cfg.mqtt.travel_window_s,
            window=cfg.outbox.in_flight,
        )
        self._core.callback(self._drain, delivery, outbox, publisher)
        return delivery

    def _drain(self, delivery: Delivery, outbox: Outbox, publisher: MqttPublisher | None) -> None:
        """At stop: what the outbox holds goes to the broker, for up to drain_timeout s."""
        timeout = self._drain_timeout
        if publisher is not None:
            depth = outbox.stats()["depth"]
            self.notifier.status(
                f"draining outbox: {depth} verdicts to the broker (at most {timeout:g} s)"
            )
            if not delivery.drain(timeout):
                log.error(
                    "outbox.not_drained_at_stop",
                    timeout_s=timeout,
                    detail="published again at the next start",
                    **outbox.stats(),
                )
        delivery.close()

    def _close_sinks_at_stop(self) -> None:
        """The sinks close in the pipeline's order, not reversed: the trigger desk first
        answers the requests that were never inspected, before the archive writes its queue."""

        def close() -> None:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:
                    log.exception("sink.close_failed", sink=type(sink).__name__)

        self._line.callback(close)

    def _open_triggers(self, publisher: MqttPublisher) -> TriggerDesk:
        cfg = self.config
        triggers = TriggerDesk(
            publisher,
            self.topics,
            accepting=cfg.camera.trigger != "free_run",
            max_bytes=cfg.mqtt.trigger_max_bytes,
            handshake=self.handshake,
        )
        # only this station's own request topics; closed with the sinks
        publisher.subscribe(self.topics.trigger, triggers.on_message, triggers.on_crash)
        return triggers

    def _open_commands(self, publisher: MqttPublisher) -> CommandDesk:
        cfg = self.config
        archive = cfg.archive.dir if cfg.archive.enabled else None
        commands = CommandDesk(
            publisher,
            self.topics,
            {
                **self.control.commands(),
                **ReviewDesk(archive).handlers(),
                **TeachDesk(self.control, cfg, publisher, self.topics).handlers(),
                "part": functools.partial(part_view, archive),  # the page's part view
            },
            max_bytes=cfg.mqtt.trigger_max_bytes,
        )
        publisher.subscribe(self.topics.cmd_filter, commands.on_message, commands.on_crash)
        self._line.callback(commands.close)  # first of all at stop: no product switch midway
        return commands

    def _make_outputs(
        self, publisher: MqttPublisher | None
    ) -> tuple[JsonlSink | None, Pictures | None]:
        """verdicts.jsonl, and the overlay sinks on their own thread (closed with the sinks)."""
        cfg = self.config
        jsonl = None
        pictures: list[VerdictSink] = []
        if cfg.output.dir is not None:
            if cfg.output.verdicts_jsonl:
                jsonl = JsonlSink(cfg.output.dir / "verdicts.jsonl")
            if cfg.output.overlays != "none":
                pictures.append(
                    OverlaySink(
                        cfg.output.dir / "overlays", cfg.output.overlays, cfg.output.jpeg_quality
                    )
                )
        if publisher is not None and cfg.mqtt.overlays != "none":
            pictures.append(
                MqttOverlaySink(
                    publisher, self.topics.overlay, cfg.mqtt.overlays, cfg.mqtt.overlay_max_bytes
                )
            )
        return jsonl, Pictures(pictures) if pictures else None

    def _connect(self, publisher: MqttPublisher | None, delivery: Delivery) -> None:
        """Connect (after the subscriptions) and start feeding the outbox's rows to the broker
        (closed by the publisher's and the delivery's closers)."""
        if publisher is not None:
            publisher.start()
        delivery.start()

    def _make_archive(self) -> ArchiveSink | None:
        a = self.config.archive
        if not (a.enabled and a.dir is not None):
            return None
        return ArchiveSink(a.dir, a.max_bytes, verdicts=a.verdicts, ok_every=a.ok_every)

    def _make_drift(self, bundle: Bundle) -> DriftMonitor | None:
        d = self.config.drift
        if not d.enabled:
            return None
        return DriftMonitor(
            bundle.thresholds.quantiles, window=d.window, min_parts=d.min_parts, alpha=d.alpha
        )

    def _make_pipeline(
        self, bundle: Bundle, engine: Engine, source: CaptureSource, delivery: Delivery
    ) -> Pipeline:
        """Its engine closes with the engine step; its threads run only inside ``run()``."""
        cfg = self.config
        handshake = self.handshake
        # a triggered part is settled (in time or late) before its verdict is stored
        recorder: Recorder = (
            delivery if handshake is None else SettlingRecorder(handshake, delivery)
        )
        return Pipeline(
            source=source,
            engine=engine,
            bundle=bundle,
            station=cfg.station.name,
            recorder=recorder,
            sinks=self.sinks,
            max_batch=cfg.engine.max_batch,
            triggers=handshake.queue if handshake is not None else None,
            grab_timeout_s=getattr(cfg.camera, "timeout_s", 5.0),
        )

    def _start_health(self, report: StationHealth) -> HealthMonitor:
        cfg = self.config
        health = HealthMonitor(
            snapshot=report.snapshot,
            stats=report.stats,
            publisher=self.publisher,
            topics=self.topics,
            path=cfg.state_dir / "health.json",
            interval_s=cfg.mqtt.health_interval_s,
            stats_interval_s=cfg.mqtt.stats_interval_s,
        )
        health.start()

        def last_word() -> None:  # before the drain: it goes out with the outbox's backlog
            health.stop()
            health.check(force=True)

        self._core.callback(last_word)
        return health

    def _start_plc(self, handshake: Handshake) -> PlcServers | None:
        """The OPC UA and Modbus servers (docs/plc.md), before the engine loads; closed last of
        the line, so the answers to parts never inspected still reach the PLC at stop. None
        when both are off; asyncua and pymodbus are imported only then."""
        cfg = self.config
        if not cfg.plc.enabled:
            return None
        from inspectd.plc.link import PlcLink
        from inspectd.plc.servers import PlcServers, PlcStartError

        servers = PlcServers(cfg.plc, PlcLink(handshake, self), station=cfg.station.name)
        self._line.callback(servers.stop)
        try:
            servers.start()
        except PlcStartError as exc:
            raise StartupError(str(exc)) from exc
        return servers

    def _load_engine(self, bundle: Bundle) -> Engine:
        cfg = self.config.engine
        # A TensorRT engine built here (first start on a new GPU) takes minutes
        with self.notifier.extending(f"loading engine for {bundle.name}"):
            engine = load_engine(
                bundle.model_path,
                backend=cfg.backend,
                device=cfg.device,
                threads=cfg.threads,
                bundle=bundle,
                max_batch=cfg.max_batch,
                precision=cfg.precision,
                cuda_graphs=cfg.cuda_graphs,
                state_dir=self.config.state_dir,
            )
        engine = slowed_if_asked(engine)  # tests and benches of the deadline (docs/plc.md)
        self.notifier.status(f"warming up engine {engine.name} for {bundle.name}")
        t0 = time.monotonic()
        engine.warmup()
        log.info(
            "engine.warmed_up",
            engine=engine.name,
            product=bundle.name,
            ms=round((time.monotonic() - t0) * 1000.0, 1),
        )
        return engine

    # -- service: metrics, readiness, watchdog --------------------------------------------------

    def _serve_metrics(self, pipeline: Pipeline, report: StationHealth) -> MetricsServer | None:
        """/metrics and /healthz (``self.metrics`` feeds on every part); None when off."""
        m = self.config.metrics
        if not m.enabled:
            return None
        from inspectd.service.metrics_http import serve_metrics  # prometheus_client: only here

        try:
            self.metrics, server = serve_metrics(m, pipeline, report, stalled=self.stalled)
        except OSError as exc:
            raise StartupError(
                f"metrics: cannot listen on {m.listen} port {m.port}: {exc.strerror or exc}"
            ) from exc
        self._service.callback(server.stop)
        return server

    def _ready(self) -> ServiceWatch:
        """READY=1 once the first broker connection attempt ended (connected or not), then the
        watchdog and STATUS= loop."""
        if self.publisher is not None:
            m = self.config.mqtt
            self.notifier.status(f"connecting to MQTT broker {m.host}:{m.port}")
            if not self.publisher.wait_connect_attempt(FIRST_CONNECT_WAIT_S):
                log.warning(
                    "mqtt.first_attempt_pending",
                    host=m.host,
                    port=m.port,
                    waited_s=FIRST_CONNECT_WAIT_S,
                    detail="ready anyway; verdicts wait in the outbox",
                )
        status = self._started().status_line  # the STATUS= line while inspecting
        self.notifier.ready(status())
        watch = ServiceWatch(
            self.notifier,
            stalled=self.stalled,
            status=status,
            status_interval_s=self.config.service.status_interval_s,
        )
        watch.start()
        self._service.callback(watch.stop)
        log.info(
            "station.ready",
            notify=self.notifier.enabled,
            watchdog_interval_s=self.notifier.watchdog_interval_s,
        )
        return watch

    def stalled(self) -> dict[str, float]:
        """What holds work without progress, name -> seconds (the watchdog and /healthz); see
        ``StationHealth.stalled``. {} before start."""
        return self.report.stalled() if self.report is not None else {}

    def run(
        self, *, limit: int | None = None, stop: threading.Event | None = None
    ) -> PipelineStats:
        return self._started().pipeline.run(limit=limit, stop=stop)

    def _started(self) -> StationHealth:
        """What start() made (the report holds the pipeline and the components)."""
        if self.report is None:
            raise RuntimeError("Station.start() first")
        return self.report

    # -- health ---------------------------------------------------------------------------------

    def health_snapshot(self) -> dict[str, Any]:
        """The health JSON (…/health, health.json, /metrics gauges)."""
        return self._started().snapshot()

    def stats_snapshot(self) -> dict[str, Any]:
        """The …/stats payload."""
        return self._started().stats()

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, drain_timeout: float | None = None) -> None:
        """Close in reverse order of start, in three phases (the module docstring): the line,
        then the core (MQTT last, after the outbox drained), then the service endpoints."""
        self._drain_timeout = (
            self.config.mqtt.drain_timeout_s if drain_timeout is None else drain_timeout
        )
        self.notifier.stopping("stopping: closing sinks and camera")
        self.threads.stopping()  # threads end on purpose from here on
        with self._service, self._core:  # each phase closes, even if one before it raised
            self._line.close()
        self.notifier.status("stopped")
        log.info("station.stopped")
