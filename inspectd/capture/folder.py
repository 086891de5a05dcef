"""A folder of image files as a camera: for demos, replays of recorded parts and tests."""

from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path

import cv2
import numpy as np
import structlog

from inspectd.capture.base import CaptureError, CaptureSource, CaptureTimeout, EndOfStream
from inspectd.frame import CameraMeta, Frame

log = structlog.get_logger(__name__)

DEFAULT_PATTERN = "*.png,*.jpg,*.jpeg,*.bmp,*.tif,*.tiff"
_POLL_S = 0.1  # how often an emptied looping folder is looked at again

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"


def _png_complete(data: bytes) -> bool:
    """Walk the chunk list: every chunk whole, up to and including IEND."""
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 12 <= end:  # length(4) type(4) data(length) crc(4)
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk_end = pos + 12 + length
        if chunk_end > end:
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos = chunk_end
    return False


def _jpeg_complete(data: bytes) -> bool:
    """An EOI marker must follow the last start-of-scan.

    Entropy-coded data never holds 0xFF followed by 0xDA or 0xD9 (a data 0xFF is stuffed
    with 0x00), so the last SOS is the start of the last scan and a file cut anywhere in
    that scan has no EOI after it. An EXIF thumbnail's EOI comes before the main image's SOS,
    and padding after the EOI does not matter.
    """
    sos = data.rfind(_JPEG_SOS)
    return sos != -1 and data.find(_JPEG_EOI, sos + 2) != -1


def _bmp_complete(data: bytes) -> bool:
    """The header states the file size (0 or garbage in rare writers: only a shortfall counts)."""
    if len(data) < 6:
        return False
    declared = int.from_bytes(data[2:6], "little")
    return len(data) >= declared


def _looks_truncated(data: bytes) -> bool:
    """Structural check for the formats whose decoders may hand back a partial image.

    OpenCV 5.0 with its bundled libpng/libjpeg-turbo returns None for a PNG or JPEG cut short,
    but older builds (and other libjpeg versions) return the decoded top part, padded with gray,
    with only a warning on stderr. That partial image must never reach the model as a good part.
    """
    if data.startswith(_PNG_SIGNATURE):
        return not _png_complete(data)
    if data.startswith(_JPEG_SOI):
        return not _jpeg_complete(data)
    if data.startswith(b"BM"):
        return not _bmp_complete(data)
    return False  # TIFF and the rest: the decoder's answer is all there is


def decode_image_file(file: Path) -> tuple[np.ndarray | None, str | None]:
    """(image, None), or (None, reason) when the file cannot be read or decoded whole.

    The image comes back as the file holds it (IMREAD_UNCHANGED): 16-bit, 4-channel and so on
    reach preprocessing, which decides; nothing is converted here.
    """
    name = file.name
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return None, f"image file vanished before it could be read: {name}"
    except OSError as exc:
        return None, f"cannot read image file {name}: {exc.strerror or exc}"
    if not data:
        return None, f"empty image file: {name}"
    undecodable = f"cannot decode image file {name} (truncated or not an image)"
    if _looks_truncated(data):
        return None, undecodable
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None, undecodable
    if image is None or image.size == 0:
        return None, undecodable
    return image, None


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
        self._camera = CameraMeta(source="folder", serial=str(self.path))
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
            part_id=file.stem,
            t_capture=t_capture,
            t_mono=t_mono,
            camera=self._camera,
            error=error,
            extra={"path": str(file)},
        )

    def close(self) -> None:
        self._files = None
