"""Capture sources: where frames come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspectd.capture.base import CaptureError, CaptureSource, CaptureTimeout, EndOfStream
from inspectd.capture.folder import FolderSource
from inspectd.capture.opencv import OpenCVSource

__all__ = [
    "CaptureError",
    "CaptureSource",
    "CaptureTimeout",
    "EndOfStream",
    "FolderSource",
    "OpenCVSource",
    "open_source",
]

SOURCES = ("folder", "opencv")


def open_source(camera_cfg: Any) -> CaptureSource:
    """The source a camera config describes, not yet opened: `with open_source(cfg) as src:`.

    Reads attributes only (`source`, then that source's fields), so any object with them will
    do: the pydantic config models, or a `types.SimpleNamespace` in tests.
    """
    source = camera_cfg.source
    if source == "folder":
        return FolderSource(
            path=Path(camera_cfg.path),
            pattern=camera_cfg.pattern,
            loop=camera_cfg.loop,
            rate_hz=camera_cfg.rate_hz,
        )
    if source == "opencv":
        return OpenCVSource(
            device=camera_cfg.device,
            width=camera_cfg.width,
            height=camera_cfg.height,
            fps=camera_cfg.fps,
            timeout_s=camera_cfg.timeout_s,
        )
    raise ValueError(f"unknown capture source {source!r} (known: {', '.join(SOURCES)})")
