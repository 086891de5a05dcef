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
    "build_source",
    "open_source",
]

SOURCES = ("folder", "opencv", "genicam")


def open_source(camera_cfg: Any) -> CaptureSource:
    """The source a camera config describes, not yet opened: `with open_source(cfg) as src:`.

    Reads attributes only (`source`, then that source's fields), so any object with them will
    do: the pydantic config models, or a `types.SimpleNamespace` in tests. With
    `isolate.enabled` the source runs in a watched child process (`IsolatedSource`, built there
    by `build_source`); an object without `isolate` gets the source in this process.
    """
    if getattr(getattr(camera_cfg, "isolate", None), "enabled", False):
        from inspectd.capture.isolated import IsolatedSource

        return IsolatedSource.for_config(camera_cfg, build_source)
    return build_source(camera_cfg)


def build_source(camera_cfg: Any) -> CaptureSource:
    """The source itself, in this process (`open_source` without isolation)."""
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
    if source == "genicam":
        from inspectd.capture.genicam import GenICamSource  # harvesters only when used

        return GenICamSource.from_config(camera_cfg)
    raise ValueError(f"unknown capture source {source!r} (known: {', '.join(SOURCES)})")
