"""A folder of image files as a camera: for demos, replays of recorded parts and tests."""

from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path

import structlog

from inspectd.capture.base import CaptureError, CaptureSource, CaptureTimeout, EndOfStream
from inspectd.frame import CameraMeta, Frame
from inspectd.imagefile import decode_image_file
from inspectd.names import escape_name, file_part_id

log = structlog.get_logger(__name__)

DEFAULT_PATTERN = "*.png,*.jpg,*.jpeg,*.bmp,*.tif,*.tiff"
_POLL_S = 0.1  # how often an emptied looping folder is looked at again


class FolderSource(CaptureSource):
    """Image files from one folder (not recursive), in file-name order.

    `pattern` is a comma-separated list of globs matched case-insensitively against file names;
    hidden files (leading dot) are skipped. With `loop` the folder is listed again at the start
    of every pass, so files added later are seen. With `rate_hz > 0` frames come out on a fixed
    monotonic-clock grid (no drift); 0 means as fast as they are asked for.
    """

    def __init__(
        self,
        path: Path,
        pattern: str = DEFAULT_PATTERN,
        loop: bool = False,
        rate_hz: float = 0.0,
    ) -> None:
        if rate_hz < 0:
            raise ValueError(f"rate_hz must be >= 0, got {rate_hz}")
        self.path = Path(path)
        self.pattern = pattern
        self.loop = loop
        self.rate_hz = rate_hz
        self._globs = [g.strip().lower() for g in pattern.split(",") if g.strip()]
        self._period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self.camera = CameraMeta(source="folder", serial=escape_name(str(self.path)))
        self._files: list[Path] | None = None
        self._index = 0
        self._frame_id = 0
        self._next_due: float | None = None
        self._warned_empty = False

    # -- listing ---------------------------------------------------------------------------

    def _matches(self, name: str) -> bool:
        lowered = name.lower()
        return any(fnmatch.fnmatchcase(lowered, g) for g in self._globs)

    def _list(self) -> list[Path]:
        """Matching regular files, sorted by name. Raises OSError if the folder can't be read."""
        files = []
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not self._matches(entry.name):
                    continue
                if entry.is_file():  # follows symlinks; skips folders, FIFOs, dangling links
                    files.append(Path(entry.path))
        files.sort(key=lambda p: p.name)
        return files

    def _relist(self) -> list[Path]:
        """The listing for the next loop pass; empty (and logged once) if the folder is gone."""
        try:
            files = self._list()
        except OSError as exc:
            files = []
            reason = exc.strerror or str(exc)
        else:
            reason = "no matching files"
        if files:
            self._warned_empty = False
        elif not self._warned_empty:
            self._warned_empty = True
            log.warning(
                "capture.folder.empty", folder=str(self.path), pattern=self.pattern, reason=reason
            )
        return files

    # -- CaptureSource ---------------------------------------------------------------------

    def open(self) -> None:
        if not self.path.exists():
            raise CaptureError(f"image folder does not exist: {self.path}")
        if not self.path.is_dir():
            raise CaptureError(f"image folder is not a folder: {self.path}")
        try:
            files = self._list()
        except OSError as exc:
            raise CaptureError(
                f"cannot list image folder {self.path}: {exc.strerror or exc}"
            ) from exc
        if not files:
            raise CaptureError(f"no files matching {self.pattern!r} in image folder {self.path}")
        self._files = files
        self._index = 0
        self._frame_id = 0
        self._next_due = None
        self._warned_empty = False
        log.info(
            "capture.folder.opened",
            folder=str(self.path),
            files=len(files),
            loop=self.loop,
            rate_hz=self.rate_hz,
        )

    def grab(self, timeout: float) -> Frame:
        if self._files is None:
            raise RuntimeError("FolderSource.grab() called before open()")
        deadline = time.monotonic() + max(timeout, 0.0)

        while self._index >= len(self._files):
            if not self.loop:
                raise EndOfStream
            files = self._relist()
            if files:
                self._files, self._index = files, 0
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CaptureTimeout(f"no files matching {self.pattern!r} in {self.path}")
            time.sleep(min(remaining, _POLL_S))

        if self._period:
            now = time.monotonic()
            due = now if self._next_due is None else self._next_due
            if due > now:
                if due > deadline:
                    time.sleep(max(deadline - now, 0.0))
                    raise CaptureTimeout(f"next frame at {self.rate_hz} Hz is not due yet")
                time.sleep(due - now)
            # Slots lie on a fixed grid (no drift); a consumer that fell behind gets the next
            # frame at once and the grid restarts there, instead of a burst of catch-up frames.
            self._next_due = max(due + self._period, time.monotonic())

        file = self._files[self._index]
        self._index += 1
        self._frame_id += 1
        t_capture, t_mono = time.time(), time.monotonic()
        image, error = decode_image_file(file)
        if error is not None:
            log.warning("capture.folder.bad_file", file=str(file), error=error)
        return Frame(
            image=image,
            frame_id=self._frame_id,
            part_id=file_part_id(file),  # a name that is not UTF-8 is escaped, reversibly
            t_capture=t_capture,
            t_mono=t_mono,
            camera=self.camera,
            error=error,
            extra={"path": str(file)},
        )

    def close(self) -> None:
        self._files = None
