"""Where verdicts go once recorded: verdicts.jsonl, overlay files, overlays over MQTT (the two
overlay sinks run on their own thread, inside ``Pictures``)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import structlog

from inspectd.contract.messages import overlay_message
from inspectd.contract.verdict import Verdict
from inspectd.inspection import Inspection, VerdictSink
from inspectd.outputs.overlay import overlay_of, to_jpeg
from inspectd.outputs.workers import BackgroundWorker

if TYPE_CHECKING:
    from inspectd.mqtt.publisher import MqttPublisher

log = structlog.get_logger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class JsonlSink:
    """One JSON line per verdict (the MQTT payload), flushed per line so a crash loses none
    that were written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", encoding="utf-8")

    def handle(self, inspection: Inspection) -> None:
        self._f.write(json.dumps(inspection.record.to_payload(), separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class OverlaySink:
    """Overlay JPEGs named <seq>_<part_id>_<verdict>.jpg, for every part or for NG/ERROR only."""

    def __init__(self, directory: Path, mode: Literal["ng", "all"], quality: int = 85) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.mode, self.quality = directory, mode, quality

    def handle(self, inspection: Inspection) -> None:
        rec = inspection.record
        if self.mode == "ng" and rec.verdict is Verdict.OK:
            return
        name = f"{rec.seq:08d}_{_UNSAFE.sub('_', rec.part_id)[:64]}_{rec.verdict.value}.jpg"
        (self.directory / name).write_bytes(to_jpeg(overlay_of(inspection), self.quality))

    def close(self) -> None:
        pass


class MqttOverlaySink:
    """Overlay JPEGs on …/overlay, QoS 0 (a picture for an HMI, not a record): part_id, seq and
    verdict ride along as MQTT 5 user properties. Scaled down until it fits ``max_bytes``."""

    def __init__(
        self,
        publisher: MqttPublisher,
        topic: str,
        mode: Literal["ng", "all"],
        max_bytes: int,
        quality: int = 80,
    ) -> None:
        self.publisher, self.topic, self.mode = publisher, topic, mode
        self.max_bytes, self.quality = max_bytes, quality
        self.too_big = 0

    def handle(self, inspection: Inspection) -> None:
        rec = inspection.record
        if self.mode == "ng" and rec.verdict is Verdict.OK:
            return
        image = overlay_of(inspection)
        data = to_jpeg(image, self.quality)
        while len(data) > self.max_bytes and min(image.shape[:2]) >= 128:
            image = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            data = to_jpeg(image, self.quality)
        if len(data) > self.max_bytes:
            self.too_big += 1
            log.warning("overlay.too_big", seq=rec.seq, bytes=len(data), max_bytes=self.max_bytes)
            return
        self.publisher.enqueue(overlay_message(self.topic, data, rec))

    def close(self) -> None:
        pass


class Pictures:
    """The overlay sinks on their own thread. The publish thread commits a part's verdict and
    then runs its sinks before it takes the next part: drawing and encoding an NG part's
    overlay (milliseconds, far more for a large frame: docs/performance.md) would hold back the
    next verdict. Best effort, like the archive: when the thread is ``depth`` parts behind, a part's
    pictures are skipped, counted (``stats()``) and logged."""

    def __init__(self, sinks: list[VerdictSink], depth: int = 8) -> None:
        self.sinks = sinks
        self._worker: BackgroundWorker[Inspection] = BackgroundWorker("pictures", self._draw, depth)

    def handle(self, inspection: Inspection) -> None:
        self._worker.offer(inspection, seq=inspection.record.seq)

    def _draw(self, inspection: Inspection) -> None:
        for sink in self.sinks:
            try:
                sink.handle(inspection)
            except Exception:  # a full disk for the files must not stop the MQTT overlay
                log.exception(
                    "pictures.failed", sink=type(sink).__name__, seq=inspection.record.seq
                )

    def stats(self) -> dict[str, int]:
        return {"skipped": self._worker.skipped}

    def problems(self) -> list[str]:
        """None: an overlay skipped to keep up is counted (``skipped``), not a fault."""
        return []

    def threads(self) -> dict[str, threading.Thread | None]:
        return self._worker.threads()

    def close(self) -> None:
        """Draw what is queued, then close the sinks."""
        self._worker.close()
        for sink in self.sinks:
            sink.close()
