"""Where verdicts go after the decision: verdicts.jsonl, overlay files, MQTT."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from inspectd.overlay import render, to_jpeg
from inspectd.pipeline import Inspection
from inspectd.verdict import Verdict

if TYPE_CHECKING:
    from inspectd.mqtt.publisher import MqttPublisher

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
        image = render(inspection.frame.image, rec, inspection.anomaly_map, inspection.geometry)
        name = f"{rec.seq:08d}_{_UNSAFE.sub('_', rec.part_id)[:64]}_{rec.verdict.value}.jpg"
        (self.directory / name).write_bytes(to_jpeg(image, self.quality))

    def close(self) -> None:
        pass


class MqttSink:
    def __init__(self, publisher: MqttPublisher) -> None:
        self.publisher = publisher

    def handle(self, inspection: Inspection) -> None:
        self.publisher.publish_verdict(inspection.record)

    def close(self) -> None:
        pass
