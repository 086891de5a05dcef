"""Pipeline faults: each one is an ERROR verdict for the parts it touched, and the line goes on.

The shipped button bundle runs on the real ONNX Runtime engine; faults are injected by small
wrappers around it (an engine that fails one call, a sink that raises), not by mocks of it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from inspectd.bundle import load_bundle
from inspectd.capture.base import CaptureSource, EndOfStream
from inspectd.contract.topics import Topics
from inspectd.delivery import Delivery
from inspectd.engine import load_engine
from inspectd.engine.base import Engine, InferenceResult
from inspectd.frame import CameraMeta, Frame
from inspectd.inspection import Inspection
from inspectd.outbox import Outbox
from inspectd.pipeline import Pipeline
from inspectd.synthetic import render_part

from support.paths import BUNDLE, needs_bundle

pytestmark = needs_bundle


class ListSource(CaptureSource):
    """Frames from a list; raises `fail_with` once the list is used up, if given."""

    def __init__(self, images: list[np.ndarray], fail_with: Exception | None = None) -> None:
        self.images = list(images)
        self.fail_with = fail_with
        self.i = 0

    def open(self) -> None:
        pass

    def grab(self, timeout: float) -> Frame:
        if self.i == len(self.images):
            if self.fail_with is not None:
                raise self.fail_with
            raise EndOfStream
        self.i += 1
        now = time.time()
        return Frame(
            self.images[self.i - 1], self.i, f"p{self.i}", now, time.monotonic(), CameraMeta("list")
        )

    def close(self) -> None:
        pass


class FaultyEngine(Engine):
    """The real engine, except that chosen calls raise or return NaN."""

    def __init__(self, inner: Engine, raise_on: set[int], nan_on: set[int]) -> None:
        self.inner, self.raise_on, self.nan_on = inner, raise_on, nan_on
        self.name, self.input_hw = inner.name, inner.input_hw
        self.calls = 0

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self.calls += 1
        if self.calls in self.raise_on:
            raise RuntimeError("device lost")
        result = self.inner.infer(batch)
        if self.calls in self.nan_on:
            result.anomaly_map[:] = np.nan
            result.score[:] = np.nan
        return result


class Collect:
    def __init__(self, fail: bool = False) -> None:
        self.got: list[Inspection] = []
        self.fail = fail

    def handle(self, inspection: Inspection) -> None:
        if self.fail:
            raise OSError("disk full")
        self.got.append(inspection)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


def parts(n: int) -> list[np.ndarray]:
    return [render_part(3, i, None)[0] for i in range(n)]


def make_pipeline(bundle, tmp_path, source, engine, sinks):
    # MQTT off: the outbox only hands out seqs
    recorder = Delivery(Outbox(tmp_path / "outbox.db"), None, Topics("t/s"), travel_window_s=10)
    return Pipeline(
        source=source, engine=engine, bundle=bundle, station="s", recorder=recorder, sinks=sinks
    )


def test_engine_failure_and_nan_are_errors_for_those_parts_only(bundle, tmp_path):
    engine = FaultyEngine(load_engine(bundle.model_path), raise_on={2}, nan_on={4})
    broken, sink = Collect(fail=True), Collect()
    pipe = make_pipeline(bundle, tmp_path, ListSource(parts(5)), engine, [broken, sink])
    stats = pipe.run()
    records = [i.record for i in sink.got]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [r.verdict.value != "ERROR" for r in records] == [True, False, True, False, True]
    assert records[1].error == "engine error: RuntimeError: device lost"
    assert "non-finite" in records[3].error and records[3].score is None
    # the broken sink was counted and did not starve the good one
    assert stats.sink_errors == 5 and stats.verdicts["ERROR"] == 2


def test_a_source_that_breaks_ends_the_run_and_says_why(bundle, tmp_path):
    engine = load_engine(bundle.model_path)
    sink = Collect()
    source = ListSource(parts(3), fail_with=OSError("USB device gone"))
    stats = make_pipeline(bundle, tmp_path, source, engine, [sink]).run()
    assert len(sink.got) == 3  # the parts taken in before the failure got their verdicts
    assert stats.capture_failure == "OSError: USB device gone"


def test_batches_give_the_same_scores_as_single_parts(bundle, tmp_path):
    engine = load_engine(bundle.model_path)
    images = parts(6)
    single, batched = Collect(), Collect()
    make_pipeline(bundle, tmp_path / "a", ListSource(images), engine, [single]).run()
    pipe = make_pipeline(bundle, tmp_path / "b", ListSource(images), engine, [batched])
    pipe.max_batch = 4
    pipe.run()
    a = [i.record.score for i in single.got]
    b = [i.record.score for i in batched.got]
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_capture_time_runs_from_the_frame_not_from_the_wait_for_it(bundle, tmp_path):
    """A camera at 8 Hz: the capture thread waits about 125 ms for each frame. That wait is
    idle time, not capture work: the capture stage counts from the frame's arrival (decode)."""
    import cv2

    from inspectd.capture.folder import FolderSource

    (tmp_path / "frames").mkdir()
    for i, image in enumerate(parts(4)):
        cv2.imwrite(str(tmp_path / "frames" / f"{i}.png"), image[:, :, ::-1])
    source = FolderSource(tmp_path / "frames", rate_hz=8.0)
    source.open()
    stats = make_pipeline(
        bundle, tmp_path, source, load_engine(bundle.model_path), [Collect()]
    ).run()
    assert stats.verdicts["OK"] + stats.verdicts["NG"] == 4
    assert max(stats.stage_ms["capture"]) < 60, stats.stage_ms["capture"]  # reading and decoding
    assert stats.seconds > 0.3  # the frames did come 125 ms apart


def _inspected(bundle, tmp_path, n: int) -> list[Inspection]:
    sink = Collect()
    make_pipeline(
        bundle, tmp_path, ListSource(parts(n)), load_engine(bundle.model_path), [sink]
    ).run()
    return sink.got


class Slow(Collect):
    def handle(self, inspection: Inspection) -> None:
        time.sleep(0.3)
        super().handle(inspection)


def test_pictures_draw_on_their_own_thread_in_order_and_skip_when_far_behind(bundle, tmp_path):
    """The overlay sinks run inside Pictures: the publish thread hands a part over and goes on
    (the next verdict's commit must not wait for a picture), the parts are drawn in order, a
    failing sink does not stop the other, and a thread too far behind skips parts and says so."""
    from inspectd.outputs.sinks import Pictures

    inspections = _inspected(bundle, tmp_path, 3)
    slow, broken = Slow(), Collect(fail=True)
    pictures = Pictures([broken, slow], depth=8)
    t0 = time.monotonic()
    for item in inspections:
        pictures.handle(item)
    assert time.monotonic() - t0 < 0.2  # three 0.3 s pictures, not waited for
    pictures.close()  # draws what is queued
    assert [i.record.seq for i in slow.got] == [1, 2, 3]
    assert pictures.stats() == {"skipped": 0}

    pictures = Pictures([Slow()], depth=1)
    for item in inspections:
        pictures.handle(item)
    pictures.close()
    assert pictures.stats()["skipped"] >= 1
