"""capture -> preprocess -> engine -> decide -> sinks, one verdict per part, in order.

Three threads so the stages overlap: capture (read, decode, preprocess) feeds a bounded
queue, inference and decisions run in the caller's thread, and the third records verdicts (seq
and the durable outbox, in batches) and then hands them to the sinks (files, overlays, trigger
answers). Queues block instead of dropping: a part that entered the pipeline always leaves it
with a verdict. Anything that goes wrong with one part is an ERROR verdict for that part, with
the reason, and the pipeline goes on.

With a trigger queue (``camera.trigger: mqtt``) the capture thread grabs one frame per request
and the verdict carries the request; a request whose deadline passed before its frame could be
grabbed becomes an ERROR verdict ("trigger expired") without touching the camera.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog

from inspectd.bundle import Bundle, Thresholds
from inspectd.capture.base import CaptureSource, CaptureTimeout, EndOfStream
from inspectd.decide import NonFiniteResult, decide
from inspectd.engine.base import Engine
from inspectd.frame import Frame, TriggerRequest
from inspectd.preprocess import Geometry, PreprocessError, PreprocessSpec, preprocess
from inspectd.verdict import Verdict, VerdictRecord

log = structlog.get_logger(__name__)

STAGES = ("capture", "preprocess", "infer", "decide", "publish")
RECENT_PARTS = 10_000  # latency statistics cover this many recent parts
TRIGGER_EXPIRED = "trigger expired"  # how an expired request's ERROR verdict starts
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


class Recorder(Protocol):
    """Gives each record its seq and stores it durably (``inspectd.delivery.Delivery``)."""

    def record(self, records: Sequence[VerdictRecord]) -> None: ...


_RECORD_BATCH = 64  # most verdicts committed to the outbox in one transaction


@dataclass(slots=True)
class _Job:
    frame: Frame
    input: np.ndarray | None
    geometry: Geometry | None
    error: str | None
    times: dict[str, float]
    spec: PreprocessSpec | None = None  # what `input` was prepared for


@dataclass
class PipelineStats:
    verdicts: Counter[str] = field(default_factory=Counter)
    # the most recent parts only: a station runs for months
    stage_ms: dict[str, deque[float]] = field(default_factory=lambda: {s: _recent() for s in STAGES})
    latency_ms: deque[float] = field(default_factory=lambda: _recent())  # capture -> decided
    sink_errors: int = 0
    frames: int = 0  # captured (or answered without a frame), for the camera's fps
    seconds: float = 0.0
    capture_failure: str | None = None  # the source broke (not one bad frame) and ended the run

    def percentiles(self, values: Iterable[float]) -> tuple[float, float]:
        values = list(values)
        if not values:
            return (float("nan"), float("nan"))
        return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def _recent() -> deque[float]:
    return deque(maxlen=RECENT_PARTS)


class Pipeline:
    def __init__(
        self,
        *,
        source: CaptureSource,
        engine: Engine,
        bundle: Bundle,
        station: str,
        recorder: Recorder,
        sinks: Sequence[VerdictSink] = (),
        max_batch: int = 1,
        queue_depth: int = 4,
        triggers: queue.Queue[TriggerRequest] | None = None,
        grab_timeout_s: float = 5.0,
    ) -> None:
        self.source = source
        self.engine = engine
        self.bundle = bundle
        self.spec: PreprocessSpec = bundle.manifest.preprocess
        self.thresholds: Thresholds = bundle.thresholds  # swapped whole on reload
        self.station = station
        self.recorder = recorder
        self.sinks = list(sinks)
        self.max_batch = max_batch
        self.triggers = triggers
        self.grab_timeout_s = grab_timeout_s
        self._inputs: queue.Queue[object] = queue.Queue(maxsize=queue_depth)
        self._outputs: queue.Queue[object] = queue.Queue(maxsize=queue_depth * 4)
        self._swap: tuple[Bundle, Engine] | None = None
        self._swap_lock = threading.Lock()
        self.stats = PipelineStats()

    def swap_product(self, bundle: Bundle, engine: Engine) -> None:
        """Inspect with another bundle (a warmed-up engine for it) from the next batch on. The
        inference thread makes the switch between batches and closes the old engine; frames
        already prepared for the old product are prepared again."""
        with self._swap_lock:
            replaced, self._swap = self._swap, (bundle, engine)
        if replaced is not None:  # switched again before any part used it
            replaced[1].close()

    def close(self) -> None:
        """Close the engine (and one waiting to be switched to)."""
        self._apply_swap()
        self.engine.close()

    def _apply_swap(self) -> None:
        with self._swap_lock:
            swap, self._swap = self._swap, None
        if swap is None:
            return
        old = self.engine
        self.bundle, self.engine = swap
        self.spec = self.bundle.manifest.preprocess
        self.thresholds = self.bundle.thresholds
        old.close()
        log.info("pipeline.product_switched", product=self.bundle.name,
                 sha256=self.bundle.model_sha256[:12])  # fmt: skip

    # -- capture thread ------------------------------------------------------------------
    def _capture(self, limit: int | None, stop: threading.Event) -> None:
        count = 0
        try:
            while not stop.is_set() and (limit is None or count < limit):
                if self.triggers is not None:
                    try:
                        request = self.triggers.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    job = self._triggered(request)
                    if job is None:
                        break  # the source ended; the request got its ERROR verdict
                else:
                    t0 = time.monotonic()
                    try:
                        frame = self.source.grab(timeout=1.0)
                    except CaptureTimeout:
                        continue
                    except EndOfStream:
                        break
                    job = self._prepare(frame, {"capture": time.monotonic() - t0})
                self.stats.frames += 1
                self._inputs.put(job)
                count += 1
        except Exception as exc:
            # The source itself broke (not one bad frame): say so loudly and end the run; the
            # parts already queued still get their verdicts.
            log.exception("capture.failed")
            self.stats.capture_failure = f"{type(exc).__name__}: {exc}"
        finally:
            self._inputs.put(_END)

    def _triggered(self, request: TriggerRequest) -> _Job | None:
        """One frame for one trigger request; an ERROR job when it cannot be had in time."""
        t0 = time.monotonic()
        error = None
        if request.deadline_mono is not None and t0 >= request.deadline_mono:
            late_ms = (t0 - request.deadline_mono) * 1000.0
            error = f"{TRIGGER_EXPIRED}: its deadline passed {late_ms:.0f} ms before capture"
        else:
            timeout = self.grab_timeout_s
            if request.deadline_mono is not None:
                timeout = min(timeout, request.deadline_mono - t0)
            try:
                frame = self.source.grab(timeout=timeout)
            except CaptureTimeout:
                error = f"frame_timeout: no frame within {timeout:.2f} s of the trigger"
            except EndOfStream:
                self._inputs.put(self._without_frame(request, "camera has no more frames", t0))
                return None
        if error is not None:
            return self._without_frame(request, error, t0)
        frame = dataclasses.replace(frame, request=request, part_id=request.part_id)
        return self._prepare(frame, {"capture": time.monotonic() - t0})

    def _without_frame(self, request: TriggerRequest, error: str, t_mono: float) -> _Job:
        frame = Frame(None, -1, request.part_id, time.time(), t_mono, self.source.camera,
                      request=request, error=error)  # fmt: skip
        return _Job(frame, None, None, error, {})

    def _prepare(self, frame: Frame, times: dict[str, float]) -> _Job:
        t0 = time.monotonic()
        spec = self.spec
        if frame.error is not None:
            return _Job(frame, None, None, frame.error, times, spec)
        try:
            assert frame.image is not None
            inp, geometry = preprocess(frame.image, spec)
        except PreprocessError as exc:
            return _Job(frame, None, None, str(exc), times, spec)
        times["preprocess"] = time.monotonic() - t0
        return _Job(frame, inp, geometry, None, times, spec)

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
        self._apply_swap()
        jobs = [
            j if j.spec is self.spec or j.frame.image is None else self._prepare(j.frame, j.times)
            for j in jobs
        ]
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
            deadline_ts=_wall_deadline(frame.request),
        )
        if error:
            log.warning("part.error", part_id=record.part_id, error=error)
        self.stats.verdicts[verdict.value] += 1
        self.stats.latency_ms.append(record.latency_ms)
        for stage, seconds in job.times.items():
            self.stats.stage_ms[stage].append(seconds * 1000.0)
        self._outputs.put(Inspection(record, frame, amap, job.geometry))

    # -- sink thread -------------------------------------------------------------------------
    def _publish(self) -> None:
        end = False
        while not end:
            batch: list[Inspection] = []
            item = self._outputs.get()
            while item is not _END:
                assert isinstance(item, Inspection)
                batch.append(item)
                if len(batch) >= _RECORD_BATCH:
                    break
                try:
                    item = self._outputs.get_nowait()
                except queue.Empty:
                    break
            end = item is _END
            if batch:
                self._record_and_sink(batch)

    def _record_and_sink(self, batch: list[Inspection]) -> None:
        t0 = time.monotonic()
        try:
            self.recorder.record([i.record for i in batch])
        except Exception:
            # Should not happen (the outbox keeps verdicts in memory when the disk fails); the
            # files still get the verdicts, without a seq.
            self.stats.sink_errors += 1
            log.exception("verdicts.not_recorded", part_ids=[i.record.part_id for i in batch])
        for item in batch:
            for sink in self.sinks:
                try:
                    sink.handle(item)
                except Exception:
                    # One broken sink (a full disk for overlays) must not starve the others.
                    self.stats.sink_errors += 1
                    log.exception("sink.failed", sink=type(sink).__name__, seq=item.record.seq)
        per_part = (time.monotonic() - t0) * 1000.0 / len(batch)
        self.stats.stage_ms["publish"].extend([per_part] * len(batch))

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


def _wall_deadline(request: TriggerRequest | None) -> float | None:
    if request is None or request.deadline_mono is None:
        return None
    return time.time() + (request.deadline_mono - time.monotonic())
