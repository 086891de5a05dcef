"""Capture sources: where frames come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspectd.capture.base import CaptureError, CaptureSource, CaptureTimeout, EndOfStream
from inspectd.capture.folder import FolderSource
from inspectd.capture.opencv import OpenCVSource
from inspectd.capture.watched import Ledger, WatchedFolderSource

__all__ = [
    "CaptureError",
    "CaptureSource",
    "CaptureTimeout",
    "EndOfStream",
    "FolderSource",
    "OpenCVSource",
    "WatchedFolderSource",
    "build_source",
    "open_source",
]

SOURCES = ("folder", "opencv", "genicam")


def open_source(camera_cfg: Any, *, ledger: Ledger | None = None) -> CaptureSource:
    """The source a camera config describes, not yet opened: `with open_source(cfg) as src:`.

    Reads attributes only (`source`, then that source's fields), so any object with them will
    do: the pydantic config models, or a `types.SimpleNamespace` in tests. With
    `isolate.enabled` (a config model: `IsolatedSource.for_config` reads its typed `isolate`
    section) the source runs in a watched child process, built there by `build_source`; an
    object without `isolate` gets the source in this process.
    ``ledger`` (the station's outbox) keeps a watched folder's bookkeeping with the verdicts.
    """
    if getattr(getattr(camera_cfg, "isolate", None), "enabled", False):
        from inspectd.capture.isolated import IsolatedSource

        return IsolatedSource.for_config(camera_cfg, build_source)
    return build_source(camera_cfg, ledger=ledger)


def build_source(camera_cfg: Any, *, ledger: Ledger | None = None) -> CaptureSource:
    """The source itself, in this process (`open_source` without isolation)."""
    source = camera_cfg.source
    watch = getattr(camera_cfg, "watch", None)
    if source == "folder" and watch is not None and getattr(watch, "enabled", False):
        return WatchedFolderSource(
            path=Path(camera_cfg.path),
            pattern=camera_cfg.pattern,
            settle_s=watch.settle_s,
            poll_s=watch.poll_s,
            done_dir=watch.done_dir,
            failed_dir=watch.failed_dir,
            rate_hz=camera_cfg.rate_hz,
            ledger=ledger,
        )
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
