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

Liveness: each thread has a ``Progress`` (``THREADS``: capture, infer, publish) saying whether
it holds work of its own (a grab, a batch, verdicts to record and sink) and when it last moved
on. Waiting for work (no frame, no trigger, an empty queue) and waiting to hand work to the
next thread (a full queue) are not busy, so ``stalled()`` names only the thread that holds work
and does not finish it: the systemd watchdog and ``/healthz`` rest on it.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import structlog

from inspectd.bundle import Bundle, Thresholds
from inspectd.capture.base import RECEIPT, CaptureSource, CaptureTimeout, EndOfStream
from inspectd.contract.verdict import Region, Verdict, VerdictRecord
from inspectd.contract.vocabulary import TEACH
from inspectd.decide import NonFiniteResult, decide
from inspectd.engine.base import Engine
from inspectd.frame import Frame, TriggerRequest
from inspectd.inspection import (
    THREADS,
    TRIGGER_EXPIRED,
    Inspection,
    PipelineStats,
    VerdictSink,
)
from inspectd.preprocess import Geometry, PreprocessError, PreprocessSpec, preprocess

log = structlog.get_logger(__name__)

_END = object()


class Recorder(Protocol):
    """Gives each record its seq and stores it durably (``inspectd.delivery.Delivery``)."""

    def record(self, records: Sequence[VerdictRecord], receipts: Sequence[str | None] = ()) -> None:
        """``receipts[i]``: the source's bookkeeping for records[i], committed with it."""


_RECORD_BATCH = 64  # most verdicts committed to the outbox in one transaction


@dataclass(slots=True)
class _Job:
    frame: Frame
    input: np.ndarray | None
    geometry: Geometry | None
    error: str | None
    times: dict[str, float]
    spec: PreprocessSpec | None = None  # what `input` was prepared for


class Progress:
    """One thread's heartbeat: whether it holds work of its own, and since when (monotonic) it
    has held it or last moved on. Written by its thread only, read by the liveness check;
    plain attribute writes, no lock."""

    __slots__ = ("thread", "busy", "since", "allow_s")

    def __init__(self, thread: str) -> None:
        self.thread = thread
        self.busy = False
        self.since = time.monotonic()
        self.allow_s = 0.0  # the work's own timeout (a grab's), granted on top of the limit

    def start(self, allow_s: float = 0.0) -> None:
        self.allow_s = allow_s
        self.since = time.monotonic()  # before busy: a reader never sees busy with an old since
        self.busy = True

    def tick(self) -> None:
        """Moved on, with more work in hand."""
        self.since = time.monotonic()

    def finish(self) -> None:
        self.since = time.monotonic()
        self.busy = False


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
        observer: Callable[[Sequence[Inspection]], None] | None = None,
    ) -> None:
        """``observer`` (metrics) sees each batch of parts after their sinks, on the publish
        thread, with every part's stage times (``Inspection.times``, "publish" included)."""
        self.source = source
        self.engine = engine
        self.bundle = bundle
        self.spec: PreprocessSpec = bundle.manifest.preprocess
        self.thresholds: Thresholds = bundle.thresholds  # replaced whole (replace_thresholds)
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
        self.observer = observer
        self.progress = {name: Progress(name) for name in THREADS}
        self._publish_thread: threading.Thread | None = None
        # while a teach takes parts (inspectd.service.teaching.Tap): True = taken, verdict NG
        self.tap: Callable[[Frame], bool] | None = None

    def stalled(self, limit_s: float) -> dict[str, float]:
        """Threads that hold work and have not moved on for more than ``limit_s`` seconds (a
        grab gets its own timeout on top): thread -> seconds since it last moved on. Idle
        threads, and threads waiting to hand work on, are never stalled; a publish thread that
        died while the pipeline runs is."""
        now = time.monotonic()
        found = {
            p.thread: round(now - p.since, 1)
            for p in self.progress.values()
            if p.busy and now - p.since > limit_s + p.allow_s
        }
        publish = self._publish_thread
        if publish is not None and not publish.is_alive():
            found["publish"] = round(now - self.progress["publish"].since, 1)
        return found

    def swap_product(self, bundle: Bundle, engine: Engine) -> None:
        """Inspect with another bundle (a warmed-up engine for it) from the next batch on. The
        inference thread makes the switch between batches and closes the old engine; frames
        already prepared for the old product are prepared again."""
        with self._swap_lock:
            replaced, self._swap = self._swap, (bundle, engine)
        if replaced is not None:  # switched again before any part used it
            replaced[1].close()

    def next_bundle(self) -> Bundle:
        """The bundle the next part is judged with: one waiting to be switched to, or the
        running one."""
        with self._swap_lock:
            return self._swap[0] if self._swap is not None else self.bundle

    def replace_thresholds(self, bundle: Bundle) -> None:
        """Judge with `bundle`'s thresholds from the next part on: the waiting switch's bundle
        or the running one, whichever `next_bundle` gave (the same model, by sha256; raises
        ValueError otherwise). Under the switch's lock, so a switch applied meanwhile cannot
        leave one product's model judged with another product's thresholds."""
        with self._swap_lock:
            if self._swap is not None:
                waiting, engine = self._swap
                if waiting.model_sha256 != bundle.model_sha256:
                    raise ValueError(f"a switch to {waiting.name} is waiting, not {bundle.name}")
                self._swap = (bundle, engine)
            elif self.bundle.model_sha256 == bundle.model_sha256:
                self.bundle, self.thresholds = bundle, bundle.thresholds
            else:
                raise ValueError(f"running {self.bundle.name}, not {bundle.name}")

    def close(self) -> None:
        """Close the engine (and one waiting to be switched to)."""
        self._apply_swap()
        self.engine.close()

    def _apply_swap(self) -> None:
        with self._swap_lock:  # model and thresholds change together, between two parts
            swap, self._swap = self._swap, None
            if swap is None:
                return
            old = self.engine
            self.bundle, self.engine = swap
            self.spec = self.bundle.manifest.preprocess
            self.thresholds = self.bundle.thresholds
        old.close()
        log.info(
            "pipeline.product_switched",
            product=self.bundle.name,
            sha256=self.bundle.model_sha256[:12],
        )

    # -- capture thread ------------------------------------------------------------------
    def _capture(self, limit: int | None, stop: threading.Event) -> None:
        count = 0
        progress = self.progress["capture"]
        try:
            while not stop.is_set() and (limit is None or count < limit):
                if self.triggers is not None:
                    try:
                        request = self.triggers.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    progress.start(allow_s=self.grab_timeout_s)
                    job = self._triggered(request)
                    if job is None:
                        break  # the source ended; the request got its ERROR verdict
                else:
                    progress.start(allow_s=1.0)
                    try:
                        frame = self.source.grab(timeout=1.0)
                    except CaptureTimeout:
                        progress.finish()  # a camera waiting for its trigger is idle
                        continue
                    except EndOfStream:
                        break
                    # from the frame's arrival (t_mono: decode, conversion, the hand-over from
                    # the camera process), not from the grab call: waiting for the next frame
                    # is idle time, and it made "capture" look as slow as the frame period
                    job = self._prepare(frame, {"capture": time.monotonic() - frame.t_mono})
                progress.finish()  # the put below waits for the inference thread
                self.stats.frames += 1
                self._inputs.put(job)
                count += 1
        except Exception as exc:
            # The source itself broke (not one bad frame): say so loudly and end the run; the
            # parts already queued still get their verdicts.
            log.exception("capture.failed")
            self.stats.capture_failure = f"{type(exc).__name__}: {exc}"
        finally:
            progress.finish()
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
        frame = Frame(
            None,
            -1,
            request.part_id,
            time.time(),
            t_mono,
            self.source.camera,
            request=request,
            error=error,
        )
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
        self.progress["infer"].start()
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
        progress = self.progress["infer"]
        progress.start()
        t0 = time.monotonic()
        thr = self.thresholds
        regions: list[Region]
        verdict, regions, score, error = Verdict.ERROR, [], None, job.error
        amap = None
        if result is not None and error is None:
            amap, score = result
            try:
                assert job.geometry is not None
                verdict, regions = decide(
                    score,
                    amap,
                    image_threshold=thr.image,
                    pixel_threshold=thr.pixel,
                    min_region_area=thr.min_region_area,
                    geometry=job.geometry,
                )
            except NonFiniteResult as exc:
                verdict, error, score = Verdict.ERROR, str(exc), None
        frame = job.frame
        tap = self.tap
        if tap is not None and error is None and tap(frame):
            verdict, regions, error = Verdict.NG, [], TEACH  # held, never OK: nobody judged it
        now = time.monotonic()
        job.times["decide"] = now - t0
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
            model_version=self.bundle.version,
            camera_serial=frame.camera.serial,
            frame_id=frame.frame_id,
            t_capture=frame.t_capture,
            t_verdict=time.time(),
            latency_ms=(now - frame.t_mono) * 1000.0,
            error=error,
            deadline_ts=_wall_deadline(frame.request),
            t_mono=now,
            deadline_mono=frame.request.deadline_mono if frame.request else None,
        )
        if error:
            log.warning("part.error", part_id=record.part_id, error=error)
        self.stats.verdicts[verdict.value] += 1
        self.stats.latency_ms.append(record.latency_ms)
        for stage, seconds in job.times.items():
            self.stats.stage_ms[stage].append(seconds * 1000.0)
        progress.finish()  # the put below waits for the publish thread
        self._outputs.put(Inspection(record, frame, amap, job.geometry, job.times))

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
                self.progress["publish"].start()
                self._record_and_sink(batch)
                self.progress["publish"].finish()
        self._publish_thread = None  # ended as it should: not a stall

    def _record_and_sink(self, batch: list[Inspection]) -> None:
        t0 = time.monotonic()
        receipts = [i.frame.extra.get(RECEIPT) for i in batch]
        with_receipts = any(r is not None for r in receipts)
        stored = True
        kinds = [i.record.verdict for i in batch]  # recording may turn one into ERROR
        try:
            if with_receipts:
                self.recorder.record([i.record for i in batch], receipts=receipts)
            else:
                self.recorder.record([i.record for i in batch])
        except Exception:
            # Should not happen (the outbox keeps verdicts in memory when the disk fails); the
            # files still get the verdicts, without a seq.
            stored = False
            self.stats.sink_errors += 1
            log.exception("verdicts.not_recorded", part_ids=[i.record.part_id for i in batch])
        for kind, item in zip(kinds, batch, strict=True):
            if item.record.verdict != kind:
                self.stats.verdicts[kind.value] -= 1
                self.stats.verdicts[item.record.verdict.value] += 1
            self.stats.last_hour.add(item.record.verdict, item.record.seq)
        for item in batch:
            for sink in self.sinks:
                try:
                    sink.handle(item)
                except Exception:
                    # One broken sink (a full disk for overlays) must not starve the others.
                    self.stats.sink_errors += 1
                    log.exception("sink.failed", sink=type(sink).__name__, seq=item.record.seq)
            self.progress["publish"].tick()
        if with_receipts:  # after the sinks: moving the files must not delay trigger answers
            try:
                self.source.recorded(
                    [
                        (i.frame, i.record, stored and i.record.durable)
                        for i in batch
                        if i.frame.extra.get(RECEIPT) is not None
                    ]
                )
            except Exception:
                self.stats.sink_errors += 1
                log.exception("source.recorded_failed", part_ids=[i.record.part_id for i in batch])
        per_part = (time.monotonic() - t0) * 1000.0 / len(batch)
        self.stats.stage_ms["publish"].extend([per_part] * len(batch))
        if self.observer is not None:
            for item in batch:
                item.times["publish"] = per_part / 1000.0
            try:
                self.observer(batch)
            except Exception:
                self.stats.sink_errors += 1
                log.exception("observer.failed")

    def run(
        self, *, limit: int | None = None, stop: threading.Event | None = None
    ) -> PipelineStats:
        """Inspect until the source ends, `limit` parts were captured, or `stop` is set; every
        captured part has been handed to every sink when this returns."""
        stop = stop or threading.Event()
        t0 = time.monotonic()
        capture = threading.Thread(
            target=self._capture, args=(limit, stop), name="capture", daemon=True
        )
        publish = threading.Thread(target=self._publish, name="publish", daemon=True)
        self._publish_thread = publish
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
