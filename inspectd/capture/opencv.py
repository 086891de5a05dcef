"""Cameras and videos OpenCV can open: a camera index, a /dev/video* node, a video file, an
rtsp/http URL.

Limitation: `cv2.VideoCapture.read()` blocks and cannot be interrupted from Python, so a camera
that hangs holds `grab()` for as long as the backend waits, whatever timeout is asked for (the
FFmpeg backend is told `timeout_s` for streams; V4L2 is told where it supports it). That is why
the daemon runs it in a watched child process by default (`isolate`, inspectd.capture.isolated),
which is killed and restarted when it hangs.
"""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import structlog

from inspectd.capture.base import CaptureError, CaptureSource, EndOfStream
from inspectd.frame import CameraMeta, Frame
from inspectd.names import escape_name

log = structlog.get_logger(__name__)

READ_FAILED = "camera read failed"
_REOPEN_BACKOFF_S = 1.0  # a camera that stays down yields at most about one error frame a second

Kind = Literal["index", "device", "stream", "file"]


def redact_url(device: str) -> str:
    """rtsp://user:secret@host/x -> rtsp://user:***@host/x, so passwords stay out of logs
    and verdict messages. Anything that is not a URL with a password comes back unchanged."""
    try:
        parts = urllib.parse.urlsplit(device)
    except ValueError:
        return device
    if not parts.scheme or "@" not in parts.netloc:
        return device
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return device
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _classify(device: int | str) -> tuple[Kind, int | str]:
    """(kind, what to hand cv2.VideoCapture)."""
    if isinstance(device, int) and not isinstance(device, bool):
        return "index", device
    if not isinstance(device, str):
        raise TypeError(f"device must be a camera index or a path/URL string, got {device!r}")
    text = device.strip()
    if text.isdigit() and not Path(text).exists():
        return "index", int(text)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme == "file":
        return "file", urllib.parse.unquote(parts.path)
    if "://" in text and parts.scheme:
        return "stream", text
    if text.startswith("/dev/") or Path(text).is_char_device():
        return "device", text
    return "file", text


class OpenCVSource(CaptureSource):
    """Frames from `cv2.VideoCapture`, passed on as OpenCV gives them (BGR uint8).

    A video file ends with EndOfStream. A live source (index, /dev node, URL) whose read fails
    yields an error frame ("camera read failed") and is reopened once before the next read.
    """

    def __init__(
        self,
        device: int | str,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.device = device
        self.width = width
        self.height = height
        self.fps = fps
        self.timeout_s = timeout_s
        self._kind, self._target = _classify(device)
        self._name = redact_url(str(device))
        self.camera = CameraMeta(source="opencv", serial=escape_name(self._name))
        self._cap: cv2.VideoCapture | None = None
        self._opened = False
        self._broken = False  # live source: the last read failed, reopen before the next
        self._frame_id = 0

    @property
    def is_live(self) -> bool:
        return self._kind != "file"

    # -- opening ---------------------------------------------------------------------------

    def _new_capture(self) -> cv2.VideoCapture:
        timeout_ms = int(self.timeout_s * 1000)
        if self._kind == "stream":
            # Only backends that take these parameters are tried (FFmpeg does).
            return cv2.VideoCapture(
                self._target,
                cv2.CAP_ANY,
                [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    timeout_ms,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    timeout_ms,
                ],
            )
        cap = cv2.VideoCapture(self._target)
        if self._kind != "file" and cap.isOpened():
            # Passing it to the constructor would skip backends without it; here it is a wish.
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms)
        return cap

    def _apply_settings(self, cap: cv2.VideoCapture) -> None:
        wanted = (
            ("width", cv2.CAP_PROP_FRAME_WIDTH, self.width),
            ("height", cv2.CAP_PROP_FRAME_HEIGHT, self.height),
            ("fps", cv2.CAP_PROP_FPS, self.fps),
        )
        for name, prop, value in wanted:
            if value is None:
                continue
            accepted = cap.set(prop, float(value))
            actual = cap.get(prop)
            if not accepted or abs(actual - value) > 0.01 * abs(value):
                log.warning(
                    "capture.opencv.setting_not_accepted",
                    device=self._name,
                    setting=name,
                    requested=value,
                    actual=actual,
                )

    def _open_capture(self) -> cv2.VideoCapture | None:
        cap = self._new_capture()
        if not cap.isOpened():
            cap.release()
            return None
        self._apply_settings(cap)
        return cap

    def open(self) -> None:
        self.close()
        # a file or a device is always a path string (_classify); only an index is an int
        target = self._target
        if self._kind == "file" and isinstance(target, str) and not Path(target).exists():
            raise CaptureError(f"video file does not exist: {self._target}")
        if self._kind == "device" and isinstance(target, str) and not Path(target).exists():
            raise CaptureError(f"camera device does not exist: {self._target}")
        cap = self._open_capture()
        if cap is None:
            why = {
                "index": "no such camera, busy, or no permission",
                "device": "not a camera, busy, or no permission",
                "stream": f"unreachable, wrong URL, or no answer within {self.timeout_s:g} s",
                "file": "not a video, or a codec this OpenCV build lacks",
            }[self._kind]
            raise CaptureError(f"OpenCV cannot open {self._kind} {self._name!r} ({why})")
        self._cap = cap
        self._opened = True
        self._frame_id = 0
        log.info(
            "capture.opencv.opened",
            device=self._name,
            kind=self._kind,
            backend=cap.getBackendName(),
            width=cap.get(cv2.CAP_PROP_FRAME_WIDTH),
            height=cap.get(cv2.CAP_PROP_FRAME_HEIGHT),
            fps=cap.get(cv2.CAP_PROP_FPS),
        )

    def _reopen(self) -> bool:
        """One attempt to get a broken live source back."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        cap = self._open_capture()
        if cap is None:
            log.warning("capture.opencv.reopen_failed", device=self._name)
            return False
        log.info("capture.opencv.reopened", device=self._name)
        self._cap = cap
        self._broken = False
        return True

    # -- CaptureSource ---------------------------------------------------------------------

    def _frame(self, image: np.ndarray | None, error: str | None) -> Frame:
        self._frame_id += 1
        return Frame(
            image=image,
            frame_id=self._frame_id,
            part_id=f"{self._frame_id:08d}",
            t_capture=time.time(),
            t_mono=time.monotonic(),
            camera=self.camera,
            error=error,
        )

    def grab(self, timeout: float) -> Frame:
        # `timeout` cannot bound a blocking read (see the module docstring); it only bounds
        # the pause between reopen attempts of a camera that stays down.
        if not self._opened:
            raise RuntimeError("OpenCVSource.grab() called before open()")
        if self._broken and not self._reopen():
            time.sleep(min(max(timeout, 0.0), _REOPEN_BACKOFF_S))
            return self._frame(None, READ_FAILED)
        assert self._cap is not None
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            log.warning("capture.opencv.read_error", device=self._name, error=str(exc))
            ok, image = False, None
        if ok and image is not None and image.size:
            return self._frame(image, None)
        if self._kind == "file":
            raise EndOfStream
        # reopened on the next grab; a read that hangs instead is the isolated child's to bound
        self._broken = True
        log.warning("capture.opencv.read_failed", device=self._name)
        return self._frame(None, READ_FAILED)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = None
        self._opened = False
        self._broken = False
