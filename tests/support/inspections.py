"""Synthetic buttons through the daemon's real pipeline (shipped bundle, ONNX Runtime, outbox
for seq), for the archive and replay tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

from inspectd.bundle import Bundle, load_bundle
from inspectd.capture.base import CaptureSource, EndOfStream
from inspectd.contract.topics import Topics
from inspectd.delivery import Delivery
from inspectd.engine import load_engine
from inspectd.frame import CameraMeta, Frame
from inspectd.inspection import Inspection, PipelineStats, VerdictSink
from inspectd.outbox import Outbox
from inspectd.pipeline import Pipeline
from inspectd.synthetic import render_part

from support.paths import BUNDLE

NO_FRAME = "trigger expired: its deadline passed 12 ms before capture"

# (part_id, image or None, error): goods are OK, crack and missing_hole NG (seed 21), the small
# frame an ERROR with a frame, the last an ERROR without one.
Part = tuple[str, np.ndarray | None, str | None]


def button_parts(good: int = 2, defect: int = 2, seed: int = 21) -> list[Part]:
    parts: list[Part] = []
    for i in range(good):
        parts.append((f"good{i}", render_part(seed, i, None)[0], None))
    for i in range(defect):
        kind = ("crack", "missing_hole")[i % 2]
        parts.append((f"{kind}{i}", render_part(seed, good + i, kind)[0], None))
    small = cv2.resize(render_part(seed, 40, None)[0], (200, 150))
    parts.append(("small", small, None))
    parts.append(("late", None, NO_FRAME))
    return parts


def write_button_parts(folder: Path, good: int = 2, defect: int = 2) -> list[Part]:
    """button_parts as PNG files in `folder` (created), for a folder camera; returns the parts
    (the one without a frame has no file)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = button_parts(good=good, defect=defect)
    for part_id, image, _ in parts:
        if image is not None:
            cv2.imwrite(str(folder / f"{part_id}.png"), image)
    return parts


class PartsSource(CaptureSource):
    """The given parts, in order, as a camera; a part without an image comes as the Frame a
    camera gives when it has none (image None, the reason in `error`)."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts, self.i = list(parts), 0
        self.camera = CameraMeta(source="list", serial="test")

    def open(self) -> None:
        pass

    def grab(self, timeout: float) -> Frame:
        if self.i == len(self.parts):
            raise EndOfStream
        part_id, image, error = self.parts[self.i]
        self.i += 1
        return Frame(
            image,
            self.i,
            part_id,
            time.time(),
            time.monotonic(),
            self.camera,
            error=error,
            extra={"file": f"{part_id}.png"},
        )

    def close(self) -> None:
        pass


class Collect:
    def __init__(self) -> None:
        self.got: list[Inspection] = []

    def handle(self, inspection: Inspection) -> None:
        self.got.append(inspection)

    def close(self) -> None:
        pass


def inspect(
    parts: list[Part], sinks: list[VerdictSink], state: Path, bundle: Bundle | None = None
) -> tuple[list[Inspection], PipelineStats]:
    """Every part through the pipeline with `sinks` (and a collector, last); the outbox in
    `state` gives the seqs."""
    bundle = bundle or load_bundle(BUNDLE)
    state.mkdir(parents=True, exist_ok=True)
    recorder = Delivery(Outbox(state / "outbox.db"), None, Topics("t/s"), travel_window_s=10)
    collect = Collect()
    pipeline = Pipeline(
        source=PartsSource(parts),
        engine=load_engine(bundle.model_path),
        bundle=bundle,
        station="s",
        recorder=recorder,
        sinks=[*sinks, collect],
    )
    try:
        stats = pipeline.run()
    finally:
        pipeline.close()
        recorder.close()
        recorder.outbox.close()
    return collect.got, stats


class BlockingSink:
    """Blocks in handle() on the ``at``-th part until released: the publish thread then holds
    work and makes no progress (a stalled stage, for the watchdog and /healthz tests)."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0
        self.blocked, self.release = threading.Event(), threading.Event()

    def handle(self, inspection: Inspection) -> None:
        self.seen += 1
        if self.seen == self.at:
            self.blocked.set()
            self.release.wait(30)

    def close(self) -> None:
        self.release.set()
