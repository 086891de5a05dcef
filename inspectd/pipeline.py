"""capture -> preprocess -> engine -> decide -> sinks, one verdict per part, in order.

Three threads so the stages overlap: capture (read, decode, preprocess) feeds a bounded
queue, inference and decisions run in the caller's thread, and sinks (MQTT, files, overlays)
run in a third. Queues block instead of dropping: a part that entered the pipeline always
leaves it with a verdict. Anything that goes wrong with one part is an ERROR verdict for that
part, with the reason, and the pipeline goes on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog

from inspectd.bundle import Bundle, Thresholds
from inspectd.capture.base import CaptureSource, CaptureTimeout, EndOfStream
from inspectd.decide import NonFiniteResult, decide
from inspectd.engine.base import Engine
from inspectd.frame import Frame
from inspectd.preprocess import Geometry, PreprocessError, PreprocessSpec, preprocess
from inspectd.sequence import SequenceCounter
from inspectd.verdict import Verdict, VerdictRecord

log = structlog.get_logger(__name__)

STAGES = ("capture", "preprocess", "infer", "decide", "publish")
_END = object()


@dataclass(slots=True)
class Inspection:
    """What sinks receive for one part."""

    record: VerdictRecord
    frame: Frame
    anomaly_map: np.ndarray | None = None  # model-input resolution
    geometry: Geometry | None = None


class VerdictSink(Protocol):
    def handle(self, inspection: Inspection) -> None: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class _Job:
    frame: Frame
    input: np.ndarray | None
    geometry: Geometry | None
    error: str | None
    times: dict[str, float]


@dataclass
class PipelineStats:
    verdicts: Counter[str] = field(default_factory=Counter)
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    latency_ms: list[float] = field(default_factory=list)  # capture -> verdict decided
    sink_errors: int = 0
    seconds: float = 0.0
    capture_failure: str | None = None  # the source broke (not one bad frame) and ended the run

    def percentiles(self, values: Sequence[float]) -> tuple[float, float]:
        if not values:
            return (float("nan"), float("nan"))
        return float(np.percentile(values, 50)), float(np.percentile(values, 99))


class Pipeline:
    def __init__(
        self,
        *,
        source: CaptureSource,
        engine: Engine,
        bundle: Bundle,
        station: str,
        sequence: SequenceCounter,
        sinks: Sequence[VerdictSink] = (),
        max_batch: int = 1,
        queue_depth: int = 4,
    ) -> None:
        self.source = source
        self.engine = engine
        self.bundle = bundle
        self.spec: PreprocessSpec = bundle.manifest.preprocess
        self.thresholds: Thresholds = bundle.thresholds  # swapped whole on reload
        self.station = station
        self.sequence = sequence
        self.sinks = list(sinks)
        self.max_batch = max_batch
        self._inputs: queue.Queue[object] = queue.Queue(maxsize=queue_depth)
        self._outputs: queue.Queue[object] = queue.Queue(maxsize=queue_depth * 4)
        self.stats = PipelineStats()

    # -- capture thread ------------------------------------------------------------------
    def _capture(self, limit: int | None, stop: threading.Event) -> None:
        count = 0
        try:
            while not stop.is_set() and (limit is None or count < limit):
                t0 = time.monotonic()
                try:
                    frame = self.source.grab(timeout=1.0)
                except CaptureTimeout:
                    continue
                except EndOfStream:
                    break
                t1 = time.monotonic()
                self._inputs.put(self._prepare(frame, {"capture": t1 - t0}))
                count += 1
        except Exception as exc:
            # The source itself broke (not one bad frame): say so loudly and end the run; the
            # parts already queued still get their verdicts.
            log.exception("capture.failed")
            self.stats.capture_failure = f"{type(exc).__name__}: {exc}"
        finally:
            self._inputs.put(_END)

    def _prepare(self, frame: Frame, times: dict[str, float]) -> _Job:
        t0 = time.monotonic()
        if frame.error is not None:
            return _Job(frame, None, None, frame.error, times)
        try:
            assert frame.image is not None
            inp, geometry = preprocess(frame.image, self.spec)
        except PreprocessError as exc:
            return _Job(frame, None, None, str(exc), times)
        times["preprocess"] = time.monotonic() - t0
        return _Job(frame, inp, geometry, None, times)

    # -- inference (caller's thread) -------------------------------------------------------
    def _next_batch(self) -> tuple[list[_Job], bool]:
        first = self._inputs.get()
        if first is _END:
            return [], True
        jobs: list[_Job] = [first]  # type: ignore[list-item]
        while len(jobs) < self.max_batch:
            try:
                item = self._inputs.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                return jobs, True
            jobs.append(item)  # type: ignore[arg-type]
        return jobs, False

    def _infer(self, jobs: list[_Job]) -> None:
        valid = [j for j in jobs if j.error is None]
        maps: dict[int, tuple[np.ndarray, float]] = {}
        if valid:
            t0 = time.monotonic()
            try:
                result = self.engine.infer(np.stack([j.input for j in valid]))  # type: ignore[misc]
                for j, m, s in zip(valid, result.anomaly_map, result.score, strict=True):
                    maps[id(j)] = (m, float(s))
            except Exception as exc:  # any backend failure is an ERROR for these parts
                log.exception("engine.failed", parts=len(valid))
                for j in valid:
                    j.error = f"engine error: {type(exc).__name__}: {exc}"
            dt = (time.monotonic() - t0) / len(valid)
            for j in valid:
                j.times["infer"] = dt
        for j in jobs:
            self._emit(j, maps.get(id(j)))

    def _emit(self, job: _Job, result: tuple[np.ndarray, float] | None) -> None:
        t0 = time.monotonic()
        thr = self.thresholds
        verdict, regions, score, error = Verdict.ERROR, [], None, job.error
        amap = None
        if result is not None and error is None:
            amap, score = result
            try:
                assert job.geometry is not None
                verdict, regions = decide(
                    score, amap,
                    image_threshold=thr.image, pixel_threshold=thr.pixel,
                    min_region_area=thr.min_region_area, geometry=job.geometry,
                )  # fmt: skip
            except NonFiniteResult as exc:
                verdict, error, score = Verdict.ERROR, str(exc), None
        now = time.monotonic()
        job.times["decide"] = now - t0
        frame = job.frame
        record = VerdictRecord(
            station=self.station,
            product=self.bundle.name,
            part_id=frame.request.part_id if frame.request else frame.part_id,
            request_id=frame.request.request_id if frame.request else None,
            verdict=verdict,
            score=None if score is None else round(score, 6),
            threshold=thr.image,
            regions=regions,
            model_name=self.bundle.manifest.model.family,
            model_sha256=self.bundle.model_sha256,
            camera_serial=frame.camera.serial,
            frame_id=frame.frame_id,
            t_capture=frame.t_capture,
            t_verdict=time.time(),
            latency_ms=(now - frame.t_mono) * 1000.0,
            error=error,
            seq=self.sequence.next(),
        )
        if error:
            log.warning("part.error", part_id=record.part_id, seq=record.seq, error=error)
        self.stats.verdicts[verdict.value] += 1
        self.stats.latency_ms.append(record.latency_ms)
        for stage, seconds in job.times.items():
            self.stats.stage_ms[stage].append(seconds * 1000.0)
        self._outputs.put(Inspection(record, frame, amap, job.geometry))

    # -- sink thread -------------------------------------------------------------------------
    def _publish(self) -> None:
        while (item := self._outputs.get()) is not _END:
            assert isinstance(item, Inspection)
            t0 = time.monotonic()
            for sink in self.sinks:
                try:
                    sink.handle(item)
                except Exception:
                    # One broken sink (a full disk for overlays) must not starve the others.
                    self.stats.sink_errors += 1
                    log.exception("sink.failed", sink=type(sink).__name__, seq=item.record.seq)
            self.stats.stage_ms["publish"].append((time.monotonic() - t0) * 1000.0)

    def run(self, *, limit: int | None = None, stop: threading.Event | None = None) -> PipelineStats:
        """Inspect until the source ends, `limit` parts were captured, or `stop` is set; every
        captured part has been handed to every sink when this returns."""
        stop = stop or threading.Event()
        t0 = time.monotonic()
        capture = threading.Thread(target=self._capture, args=(limit, stop), name="capture", daemon=True)
        publish = threading.Thread(target=self._publish, name="publish", daemon=True)
        capture.start()
        publish.start()
        try:
            done = False
            while not done:
                jobs, done = self._next_batch()
                if jobs:
                    self._infer(jobs)
        finally:
            self._outputs.put(_END)
            publish.join()
            capture.join(timeout=5.0)
            self.stats.seconds = time.monotonic() - t0
        return self.stats
