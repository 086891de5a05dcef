"""Prometheus metrics and a liveness check over HTTP on a local port (the ``metrics`` section).

``GET /metrics``: the station's own registry (never the process-wide default, so stations and
tests do not collide) in the Prometheus text format. Verdict counters and latency histograms are
fed per part by the pipeline's observer (on the publish thread, after the sinks: a part is
counted once its verdict is recorded and written); gauges (camera, MQTT, outbox, drift, …) are
read from the health snapshot at scrape time. docs/metrics.md lists every metric.

``GET /healthz``: 200 while no thread is stalled or dead (the check that also gates the systemd
watchdog), 503 otherwise; both with a JSON body naming the stalled threads. A 200 says
``"degraded"`` (with the problems) while verdicts are held back although the station is up:
refused by the broker or quarantined. Nothing else would show that, and a restart would not
fix it, so it stays 200: other problems (a broker outage, drift) leave it ``"live"``.

One small ``http.server`` serves both, bound only to the configured address.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from inspectd.contract.verdict import Verdict
from inspectd.inspection import STAGES, THREADS, Inspection, PipelineStats

if TYPE_CHECKING:
    from inspectd.config.service import MetricsConfig
    from inspectd.pipeline import Pipeline
    from inspectd.service.health import StationHealth

log = structlog.get_logger(__name__)
disable_created_metrics()  # no *_created series: they double the output and nobody graphs them

# Seconds: per-stage times run from ~50 µs (decide) to a second (a big batch on a CPU).
STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
DRIFTING = ("drift", "drifting")  # drift states that count as drifting


class StationMetrics:
    """The station's registry: ``observe`` is the pipeline's observer, the rest is collected
    at scrape time from ``health()`` (``StationHealth.snapshot``), ``stats`` (the pipeline's
    counters) and ``stalled()`` (``Station.stalled``)."""

    def __init__(
        self,
        *,
        health: Callable[[], dict[str, Any]],
        stats: PipelineStats,
        stalled: Callable[[], dict[str, float]],
        product: str | None = None,
    ) -> None:
        """``product``: the one inspected first, whose verdict counters show from the start."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.verdicts = Counter(
            "inspectd_verdicts",
            "Verdicts recorded, by product and verdict.",
            ["product", "verdict"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "inspectd_stage_seconds",
            "Seconds one part spent in each pipeline stage (publish: recording and sinks).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.latency_seconds = Histogram(
            "inspectd_latency_seconds",
            "Seconds from capture to verdict, per part.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._stages = {s: self.stage_seconds.labels(s) for s in STAGES}
        self._products: dict[str, dict[str, Any]] = {}
        if product is not None:
            self._counters(product)
        self.registry.register(_ScrapeCollector(health, stats, stalled))

    def observe(self, batch: Sequence[Inspection]) -> None:
        for item in batch:
            record = item.record
            counters = self._products.get(record.product) or self._counters(record.product)
            counters[record.verdict.value].inc()
            self.latency_seconds.observe(record.latency_ms / 1000.0)
            for stage, seconds in item.times.items():
                histogram = self._stages.get(stage)
                if histogram is not None:
                    histogram.observe(seconds)

    def _counters(self, product: str) -> dict[str, Any]:
        """Every verdict kind of a product shows, at 0 until it happens."""
        counters = {v.value: self.verdicts.labels(product, v.value) for v in Verdict}
        self._products[product] = counters
        return counters

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeCollector(Collector):
    """Gauges read when Prometheus asks; a snapshot that fails leaves them out (and logs)."""

    def __init__(
        self,
        health: Callable[[], dict[str, Any]],
        stats: PipelineStats,
        stalled: Callable[[], dict[str, float]],
    ) -> None:
        self.health, self.stats, self.stalled = health, stats, stalled

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._pipeline()
            yield from self._health(self.health())
        except Exception:  # a scrape must answer with what it has
            log.exception("metrics.collect_failed")

    def _pipeline(self) -> Iterator[Metric]:
        stats = self.stats
        stalled = self.stalled()
        yield _gauge(
            "inspectd_live", "1 while no pipeline thread is stalled (as /healthz).", not stalled
        )
        family = GaugeMetricFamily(
            "inspectd_thread_stalled",
            "1 when the pipeline thread holds work without progress.",
            labels=["thread"],
        )
        for thread in THREADS:
            family.add_metric([thread], 1.0 if thread in stalled else 0.0)
        yield family
        yield CounterMetricFamily(
            "inspectd_frames",
            "Frames captured (or triggers answered without one).",
            value=stats.frames,
        )
        yield CounterMetricFamily(
            "inspectd_sink_errors",
            "Sink and recording failures (the part still got its verdict).",
            value=stats.sink_errors,
        )

    def _health(self, h: dict[str, Any]) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "inspectd_info",
            "The station, its product, model and engine.",
            labels=["station", "product", "model_sha256", "engine", "version"],
        )
        info.add_metric(
            [
                str(h.get(k, ""))
                for k in ("station", "product", "model_sha256", "engine", "version")
            ],
            1.0,
        )
        yield info
        yield _gauge(
            "inspectd_health_ok",
            "1 when health.state is ok, 0 when degraded.",
            h.get("state") == "ok",
        )
        camera = h.get("camera") or {}
        yield _gauge(
            "inspectd_camera_up",
            "1 while the camera works, 0 once it failed.",
            camera.get("state") == "ok",
        )
        yield GaugeMetricFamily(
            "inspectd_camera_fps",
            "Frames per second over the last second or more.",
            value=float(camera.get("fps") or 0.0),
        )
        thresholds = h.get("thresholds") or {}
        family = GaugeMetricFamily(
            "inspectd_threshold", "Thresholds in use (image score, pixel).", labels=["kind"]
        )
        for kind in ("image", "pixel"):
            if isinstance(thresholds.get(kind), int | float):
                family.add_metric([kind], float(thresholds[kind]))
        yield family
        mqtt = h.get("mqtt") or {}
        if mqtt.get("enabled"):
            yield _gauge(
                "inspectd_mqtt_connected",
                "1 while connected to the broker.",
                bool(mqtt.get("connected")),
            )
            yield _gauge(
                "inspectd_mqtt_stalled",
                "1 while connected with messages waiting and no PUBACK for mqtt.ack_timeout_s.",
                bool(mqtt.get("stalled")),
            )
            yield GaugeMetricFamily(
                "inspectd_mqtt_refused_waiting",
                "Verdict messages the broker refused (PUBACK >= 0x80), kept and waiting.",
                value=float(mqtt.get("refused_waiting") or 0),
            )
            yield CounterMetricFamily(
                "inspectd_mqtt_handler_errors",
                "Exceptions caught from "
                "request handlers (a bug; each was answered internal_error).",
                value=float(mqtt.get("handler_errors") or 0),
            )
        yield from _triggers(h.get("triggers"))
        yield from _outbox(h.get("outbox") or {})
        yield from _drift(h.get("drift"))


def _outbox(outbox: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "inspectd_outbox_depth",
        "Verdicts held in the outbox, not yet acknowledged by the broker.",
        value=float(outbox.get("depth") or 0),
    )
    yield GaugeMetricFamily(
        "inspectd_outbox_oldest_age_seconds",
        "Age of the oldest verdict held (0 when empty).",
        value=float(outbox.get("oldest_age_s") or 0.0),
    )
    yield GaugeMetricFamily(
        "inspectd_outbox_quarantined",
        "Verdicts set aside in the outbox, not sent (damaged, or refused for good).",
        value=float(outbox.get("quarantined") or 0),
    )
    yield _gauge(
        "inspectd_outbox_durable",
        "1 while verdicts are committed to disk.",
        bool(outbox.get("durable")),
    )
    dropped = CounterMetricFamily(
        "inspectd_outbox_dropped",
        "Verdicts the bounded outbox dropped, by kind, since its file was created.",
        labels=["kind"],
    )
    for kind, count in sorted((outbox.get("dropped") or {}).items()):
        dropped.add_metric([str(kind)], float(count))
    yield dropped


def _triggers(triggers: Any) -> Iterator[Metric]:
    """From health's ``triggers`` entry (a station with MQTT): overload apart from refusals."""
    if not isinstance(triggers, dict):
        return
    yield CounterMetricFamily(
        "inspectd_trigger_requests",
        "Trigger requests accepted for inspection.",
        value=float(triggers.get("requests") or 0),
    )
    yield CounterMetricFamily(
        "inspectd_trigger_duplicates",
        "Trigger requests answered from the cache (request_id seen before).",
        value=float(triggers.get("duplicates") or 0),
    )
    yield CounterMetricFamily(
        "inspectd_trigger_overloaded",
        "Trigger requests refused because the queue was full (overloaded).",
        value=float(triggers.get("overloaded") or 0),
    )
    refused = CounterMetricFamily(
        "inspectd_trigger_refused",
        "Trigger requests refused for what they were, by error code (overloaded not included).",
        labels=["code"],
    )
    for code, count in sorted((triggers.get("errors") or {}).items()):
        if code != "overloaded":
            refused.add_metric([str(code)], float(count))
    yield refused
    yield GaugeMetricFamily(
        "inspectd_trigger_queue",
        "Trigger requests waiting for the camera.",
        value=float(triggers.get("queued") or 0),
    )
    yield _gauge(
        "inspectd_trigger_overload",
        "1 while requests are refused for a full queue (and 10 s after the last).",
        triggers.get("overload") is not None,
    )


def _drift(drift: Any) -> Iterator[Metric]:
    """From health's ``drift`` entry, when the station has one: read defensively."""
    state = drift.get("state") if isinstance(drift, dict) else None
    if not isinstance(state, str):
        return
    yield _gauge(
        "inspectd_drifting",
        "1 when the score distribution has drifted from calibration.",
        state in DRIFTING,
    )
    family = GaugeMetricFamily(
        "inspectd_drift_state", "The drift monitor's state (value 1).", labels=["state"]
    )
    family.add_metric([state], 1.0)
    yield family


def _gauge(name: str, documentation: str, value: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=1.0 if value else 0.0)


# -- HTTP ---------------------------------------------------------------------------------------


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0: any free port; ``port`` then says
    which), in a thread of its own."""

    def __init__(
        self,
        metrics: StationMetrics,
        *,
        host: str,
        port: int,
        stalled: Callable[[], dict[str, float]],
        degraded: Callable[[], list[str]] = list,
    ) -> None:
        """``degraded()``: the problems that hold verdicts back (/healthz names them)."""
        handler = _handler(metrics, stalled, degraded)
        server_class = _V6Server if ipaddress.ip_address(host).version == 6 else ThreadingHTTPServer
        self._server = server_class((host, port), handler)  # OSError: the port is taken
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="metrics",
            kwargs={"poll_interval": 0.5},
            daemon=True,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("metrics.listening", host=self.host, port=self.port, url=self.url + "/metrics")

    def threads(self) -> dict[str, threading.Thread | None]:
        return {"metrics-http": self._thread}

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5.0)
        self._server.server_close()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve_metrics(
    config: MetricsConfig,
    pipeline: Pipeline,
    report: StationHealth,
    *,
    stalled: Callable[[], dict[str, float]],
) -> tuple[StationMetrics, MetricsServer]:
    """A station's metrics, fed by its pipeline from the first part on, and their server,
    started (OSError when it cannot listen)."""
    metrics = StationMetrics(
        health=report.snapshot, stats=pipeline.stats, stalled=stalled, product=pipeline.bundle.name
    )
    pipeline.observer = metrics.observe
    server = MetricsServer(
        metrics, host=config.listen, port=config.port, stalled=stalled, degraded=report.held_back
    )
    server.start()
    return metrics, server


def liveness(stalled: dict[str, float], degraded: list[str]) -> tuple[int, dict[str, Any]]:
    """/healthz: (HTTP status, JSON body)."""
    if stalled:
        return 503, {
            "status": "stalled",
            "stalled": stalled,
            "detail": "these threads hold work and made no progress, or ended",
        }
    if degraded:
        return 200, {
            "status": "degraded",
            "stalled": {},
            "problems": degraded,
            "detail": "alive, but verdicts are held back; a restart would not help",
        }
    return 200, {"status": "live", "stalled": {}}


def _handler(
    metrics: StationMetrics,
    stalled: Callable[[], dict[str, float]],
    degraded: Callable[[], list[str]],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "inspectd"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                code, body = liveness(stalled(), degraded())
                self._answer(code, json.dumps(body).encode() + b"\n", "application/json")
            else:
                self._answer(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _answer(self, code: int, payload: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature
            pass  # a scrape every 15 s is not worth a log line

    return Handler
