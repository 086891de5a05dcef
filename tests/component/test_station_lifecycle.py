"""The station's stop as the reverse of its start, also after a start that failed half-way: a
real Station on the test bundle, in-process (moved from the unit folder: it opens an engine,
an outbox and a camera)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inspectd.capture.base import CaptureError
from inspectd.capture.folder import FolderSource
from inspectd.config import StationConfig
from inspectd.outbox import Outbox
from inspectd.pipeline import Pipeline
from inspectd.service.health import HealthMonitor
from inspectd.service.sd_notify import Notifier
from inspectd.service.station import Station

from support.station import station_dict


def config(tmp_path: Path) -> StationConfig:
    return StationConfig.model_validate(station_dict(tmp_path))


class Recorder(Notifier):
    """What the station told systemd, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.said: list[str] = []

    def status(self, text: str) -> bool:
        self.said.append(text)
        return True

    def stopping(self, status: str = "stopping") -> bool:
        self.said.append(f"STOPPING {status}")
        return True


def test_a_start_that_failed_half_way_closes_what_it_opened(tmp_path: Path) -> None:
    """The camera folder is missing: start raises after the engine and the outbox opened;
    stop closes those two (the outbox's seq reservation shrinks: no gap) and says stopped."""
    notifier = Recorder()
    station = Station(config(tmp_path), notifier=notifier)
    with pytest.raises(CaptureError):
        station.start()
    assert station.outbox is not None and station.source is None
    station.stop()
    assert station.outbox._closed  # noqa: SLF001
    assert notifier.said[-2:] == ["STOPPING stopping: closing sinks and camera", "stopped"]
    with pytest.raises(RuntimeError, match="start"):
        station.health_snapshot()


def test_stop_is_the_reverse_of_start_in_its_phases(tmp_path: Path, monkeypatch: Any) -> None:
    """The line (camera) first, then the core in reverse: the last health word, the outbox,
    the engine (through the pipeline); then the service, and "stopped"."""
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(frames / f"{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    order: list[str] = []

    def spy(cls: type, method: str, name: str, only: Any = None) -> None:
        real = getattr(cls, method)

        def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
            if only is None or only(kw):
                order.append(name)
            return real(self, *a, **kw)

        monkeypatch.setattr(cls, method, wrapper)

    spy(FolderSource, "close", "camera")
    spy(HealthMonitor, "check", "last health", only=lambda kw: kw.get("force"))
    spy(Outbox, "close", "outbox")
    spy(Pipeline, "close", "engine")
    notifier = Recorder()
    station = Station(config(tmp_path), notifier=notifier)
    station.start()
    station.run(limit=2)
    order.clear()  # the first health message at start
    station.stop()
    assert order == ["camera", "last health", "outbox", "engine"]
    assert notifier.said[-1] == "stopped"
