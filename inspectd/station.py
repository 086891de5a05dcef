"""Wires one station from its config: bundle, engine, camera, sequence, MQTT, sinks, pipeline.

Explicit start and stop steps, in order; `inspectd run` and `inspectd demo` both use it, so the
demo shows the daemon's real path.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import structlog

from inspectd import __version__
from inspectd.bundle import Bundle, load_bundle
from inspectd.capture import open_source
from inspectd.capture.base import CaptureSource
from inspectd.config import StationConfig
from inspectd.engine import Engine, load_engine
from inspectd.mqtt.publisher import MqttPublisher
from inspectd.mqtt.topics import Topics
from inspectd.pipeline import Pipeline, PipelineStats, VerdictSink
from inspectd.sequence import SequenceCounter
from inspectd.sinks import JsonlSink, MqttSink, OverlaySink

log = structlog.get_logger(__name__)


class Station:
    def __init__(self, config: StationConfig, *, extra_sinks: Sequence[VerdictSink] = ()) -> None:
        self.config = config
        self.extra_sinks = list(extra_sinks)
        self.boot_id = uuid.uuid4().hex
        self.bundle: Bundle | None = None
        self.engine: Engine | None = None
        self.source: CaptureSource | None = None
        self.publisher: MqttPublisher | None = None
        self.sinks: list[VerdictSink] = []
        self.pipeline: Pipeline | None = None
        self.sequence: SequenceCounter | None = None

    def start(self) -> None:
        cfg = self.config
        self.bundle = load_bundle(cfg.products_dir / cfg.product)
        log.info("bundle.loaded", product=self.bundle.name, model=self.bundle.manifest.model.family,
                 sha256=self.bundle.model_sha256[:12], threshold=self.bundle.thresholds.image)  # fmt: skip
        self.engine = load_engine(
            self.bundle.model_path,
            backend=cfg.engine.backend,
            device=cfg.engine.device,
            threads=cfg.engine.threads,
        )
        self.engine.warmup()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.sequence = SequenceCounter(cfg.state_dir / "seq")
        self.source = open_source(cfg.camera)
        self.source.open()

        if cfg.output.dir is not None:
            if cfg.output.verdicts_jsonl:
                self.sinks.append(JsonlSink(cfg.output.dir / "verdicts.jsonl"))
            if cfg.output.overlays != "none":
                self.sinks.append(OverlaySink(cfg.output.dir / "overlays", cfg.output.overlays,
                                              cfg.output.jpeg_quality))  # fmt: skip
        if cfg.mqtt.enabled:
            self.publisher = MqttPublisher(
                host=cfg.mqtt.host,
                port=cfg.mqtt.port,
                protocol=cfg.mqtt.protocol,
                client_id=cfg.mqtt.client_id or f"inspectd-{cfg.station.name}",
                keepalive_s=cfg.mqtt.keepalive_s,
                topics=Topics(cfg.topic_base()),
                status_fields={
                    "boot_id": self.boot_id,
                    "version": __version__,
                    "product": self.bundle.name,
                    "model_sha256": self.bundle.model_sha256,
                },
            )
            self.publisher.start()
            self.sinks.append(MqttSink(self.publisher))
        self.sinks.extend(self.extra_sinks)
        self.pipeline = Pipeline(
            source=self.source,
            engine=self.engine,
            bundle=self.bundle,
            station=cfg.station.name,
            sequence=self.sequence,
            sinks=self.sinks,
            max_batch=cfg.engine.max_batch,
        )
        log.info("station.started", station=cfg.station.name, camera=cfg.camera.source,
                 engine=self.engine.name, mqtt=cfg.mqtt.enabled)  # fmt: skip

    def run(self, *, limit: int | None = None, stop: threading.Event | None = None) -> PipelineStats:
        if self.pipeline is None:
            raise RuntimeError("Station.start() first")
        return self.pipeline.run(limit=limit, stop=stop)

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Close in reverse order of start; MQTT last, after its queue drained."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("sink.close_failed", sink=type(sink).__name__)
        if self.source is not None:
            self.source.close()
        if self.publisher is not None:
            if not self.publisher.wait_published(drain_timeout):
                log.error("mqtt.unacknowledged_at_stop", **self.publisher.stats())
            self.publisher.stop(timeout=drain_timeout)
        if self.engine is not None:
            self.engine.close()
        if self.sequence is not None:
            self.sequence.close()  # a clean stop leaves no gap in seq
        log.info("station.stopped")
