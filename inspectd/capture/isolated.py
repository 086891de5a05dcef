"""Any capture source in a child process that is watched, killed and restarted.

Camera drivers hang: harvesters on device loss, ``cv2.VideoCapture.read()`` on an RTSP drop or
a USB unplug, and neither can be interrupted from Python. So the source runs in a child process
(multiprocessing "spawn": a threaded parent is never forked), built there by a picklable
factory (``functools.partial(build_source, camera_config)``), and the parent only reads frames.

The pieces, one module each:
- ``ring``: the shared-memory ring the frames travel through (images are never pickled) and its
  slot states; the child sizes it from the first frame and makes a bigger one when a frame does
  not fit (a replay first waits until the parent has read the old ring, a live camera's unread
  frames there count as dropped).
- ``protocol``: the small messages on the pipe (a frame's slot and metadata, trigger requests).
- ``child``: the child's loop (free run or one grab per trigger request) and its heartbeat.
- ``supervisor``: the watchdog that kills a dead or stalled child (heartbeat older than
  ``heartbeat_timeout_s``, which must exceed the longest single grab call of the source; the
  child never asks for more than 0.5 s per call) and restarts it with backoff.
- here, ``IsolatedSource``: the CaptureSource the pipeline sees.

**While offline** ``grab()`` never hangs and never raises: it returns a Frame without image and
with ``error="camera_offline: <reason>"``, so the part becomes an ERROR verdict.
- Trigger mode: a request that reaches the grab gets that answer at once (never silence); the
  station's handshake refuses new triggers ``not_ready`` meanwhile (``offline()``), so these
  are the parts accepted before the camera went away.
- Free run: the first grab after the camera went offline gets it at once; later grabs wait up
  to their timeout for the camera to come back and get it only if it did not: at most one ERROR
  per grab timeout (one a second in the pipeline) while the camera stays offline.

A source that cannot be opened at the first start makes ``open()`` raise CaptureError (the
daemon exits 1 and systemd retries); every failure after a successful start is restarted.

The child logs like the parent (``inspectd.logs.logging_settings()``: the station's level and
resolved format, passed in the spawn arguments), to the inherited stderr, with
``process="camera"`` on every line.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from inspectd.capture.base import CaptureSource, CaptureTimeout, EndOfStream
from inspectd.capture.child import CHILD_GRAB_S, SourceFactory
from inspectd.capture.protocol import (
    Ended,
    Failed,
    FrameReady,
    Grab,
    GrabTimedOut,
    NewRing,
)
from inspectd.capture.supervisor import POLL_S, Generation, RestartBackoff, Supervisor
from inspectd.frame import CameraMeta, Frame

if TYPE_CHECKING:
    from inspectd.config.camera import CameraConfig

OFFLINE = "camera_offline"  # how an offline camera's ERROR verdicts start
DEFAULT_SLOTS = 4
_LOCK_S = 0.5  # longest wait for the ring lock (a stopped child may hold it)

__all__ = ["DEFAULT_SLOTS", "OFFLINE", "IsolatedSource", "SourceFactory"]


class IsolatedSource(CaptureSource):
    """``factory()`` (a CaptureSource, built in the child) behind a watched child process."""

    def __init__(
        self,
        factory: SourceFactory,
        *,
        name: str = "camera",
        triggered: bool = False,
        heartbeat_timeout_s: float = 3.0,
        restart_backoff_s: float = 0.5,
        restart_backoff_max_s: float = 30.0,
        open_timeout_s: float = 60.0,
        slots: int = DEFAULT_SLOTS,
    ) -> None:
        if slots < 2:
            raise ValueError(f"slots must be >= 2, got {slots}")
        if heartbeat_timeout_s <= CHILD_GRAB_S:
            raise ValueError(
                f"heartbeat_timeout_s must be > {CHILD_GRAB_S}, got {heartbeat_timeout_s}"
            )
        self.factory = factory
        self.triggered = triggered
        self._sup = Supervisor(
            factory,
            name=name,
            triggered=triggered,
            slots=slots,
            heartbeat_timeout_s=heartbeat_timeout_s,
            backoff=RestartBackoff(restart_backoff_s, restart_backoff_max_s),
            open_timeout_s=open_timeout_s,
        )
        self._reported_episode = 0  # the last offline episode free run answered at once
        self._req_ids = itertools.count(1)
        self._offline_ids = itertools.count(1)

    @classmethod
    def for_config(
        cls, camera_cfg: CameraConfig, build: Callable[[CameraConfig], CaptureSource]
    ) -> IsolatedSource:
        """The camera a config describes (``build(camera_cfg)`` in the child), watched as its
        ``isolate`` section says."""
        iso = camera_cfg.isolate
        return cls(
            functools.partial(build, camera_cfg),
            name=str(camera_cfg.source),
            triggered=camera_cfg.trigger != "free_run",
            heartbeat_timeout_s=iso.heartbeat_timeout_s,
            restart_backoff_s=iso.restart_backoff_s,
            restart_backoff_max_s=iso.restart_backoff_max_s,
        )

    @property  # the child's camera, known once it opened
    def camera(self) -> CameraMeta:
        return self._sup.camera

    @camera.setter
    def camera(self, value: CameraMeta) -> None:
        self._sup.camera = value

    def open(self) -> None:
        if self._sup.gen is not None:
            raise RuntimeError("IsolatedSource is open already")
        self._sup.start()

    def close(self) -> None:
        self._sup.stop()

    def threads(self) -> dict[str, threading.Thread | None]:
        """The supervisor's watchdog (restarts the child), for the station's thread watch."""
        return self._sup.threads()

    def stats(self) -> dict[str, Any]:
        """health's camera: "offline" while the child is not online, and the child's state."""
        process = self.state()
        return {"state": "ok" if process["state"] == "online" else "offline", "process": process}

    def problems(self) -> list[str]:
        process = self.state()
        if process["state"] == "online":
            return []
        return [f"{OFFLINE}: {process['reason'] or process['state']}"]

    def offline(self) -> str | None:
        """While no child is online (down, restarting): a trigger is refused not_ready."""
        sup = self._sup
        if sup.online() is not None:
            return None
        return f"{OFFLINE}: {sup.reason or sup.state}"

    def state(self) -> dict[str, Any]:
        """The child process: state (online, starting, offline, …), reason, restarts, dropped
        frames and its pid."""
        sup = self._sup
        gen = sup.gen
        return {
            "state": sup.state,
            "reason": sup.reason,
            "restarts": sup.restarts,
            "dropped": sup.dropped(),
            "child_pid": gen.pid if gen is not None and not gen.dead else None,
        }

    # -- frames ---------------------------------------------------------------------------

    def _offline_frame(self) -> Frame:
        n = next(self._offline_ids)
        return Frame(
            None,
            -1,
            f"{OFFLINE}-{n:06d}",
            time.time(),
            time.monotonic(),
            self.camera,
            error=f"{OFFLINE}: {self._sup.reason or 'camera process not running'}",
        )

    def grab(self, timeout: float) -> Frame:
        if not self._sup.running:
            raise RuntimeError("IsolatedSource.grab() called before open()")
        with self._sup.reader:
            self._sup.reap()
            if self.triggered:
                return self._grab_triggered(timeout)
            return self._grab_free(timeout)

    def _grab_free(self, timeout: float) -> Frame:
        sup = self._sup
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            if sup.closing.is_set():
                raise EndOfStream
            gen = sup.online()
            if gen is None:
                if self._reported_episode != sup.episode:
                    self._reported_episode = sup.episode  # the part being grabbed: at once
                    return self._offline_frame()
                if time.monotonic() >= deadline:
                    return self._offline_frame()
                time.sleep(POLL_S)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CaptureTimeout(f"no frame within {timeout:.2f} s")
            frame = self._receive(gen, min(remaining, POLL_S), None)
            if frame is not None:
                return frame

    def _grab_triggered(self, timeout: float) -> Frame:
        sup = self._sup
        gen = sup.online()
        if gen is None:
            if sup.ended or sup.closing.is_set():
                raise EndOfStream
            return self._offline_frame()
        req_id = next(self._req_ids)
        try:
            gen.conn.send(Grab(req_id, max(timeout, 0.0)))
        except (OSError, ValueError):
            return self._offline_frame()
        deadline = time.monotonic() + max(timeout, 0.0) + 1.0  # the child answers a timeout
        while True:
            if sup.closing.is_set():
                raise EndOfStream
            if sup.online() is not gen:
                return self._offline_frame()
            if time.monotonic() > deadline:
                raise CaptureTimeout(f"no answer from the camera process within {timeout:.2f} s")
            frame = self._receive(gen, POLL_S, req_id)
            if frame is not None:
                return frame

    def _receive(self, gen: Generation, wait: float, req_id: int | None) -> Frame | None:
        """The next message's frame; None when there was none (or it was stale)."""
        try:
            if not gen.conn.poll(wait):
                return None
            msg = gen.conn.recv()
        except (EOFError, OSError):
            if gen.proc.exitcode == 0 or self._sup.ended:
                self._sup.ended = True
                raise EndOfStream from None
            time.sleep(wait)  # the child is gone; the watchdog restarts it
            return None
        match msg:
            case FrameReady():
                return self._frame(gen, msg, req_id)
            case NewRing(number=number, name=name, slot_bytes=slot_bytes):
                gen.attach(number, name, slot_bytes)
            case Ended(req_id=ended):
                if req_id is None or ended == req_id:
                    self._sup.ended = True
                    raise EndOfStream
            case GrabTimedOut(req_id=timed_out):
                if timed_out == req_id:
                    raise CaptureTimeout("no frame from the camera within the timeout")
            case Failed(reason=reason):
                gen.failure = f"the camera failed: {reason}"
        return None

    def _frame(self, gen: Generation, msg: FrameReady, req_id: int | None) -> Frame | None:
        image = None
        if msg.slot is not None:
            image = self._copy_slot(gen, msg)
            if image is None:
                return None  # overwritten before it was read: counted as dropped
        if req_id is not None and msg.req_id != req_id:
            return None  # the answer to a request that was given up on
        return Frame(
            image=image,
            frame_id=msg.frame_id,
            part_id=msg.part_id,
            t_capture=msg.t_capture,
            t_mono=msg.t_mono,
            camera=msg.camera,
            error=msg.error,
            extra=msg.extra,
        )

    def _copy_slot(self, gen: Generation, msg: FrameReady) -> np.ndarray | None:
        if msg.ring not in gen.rings or msg.slot is None or msg.shape is None or msg.dtype is None:
            return None
        shm, slot_bytes = gen.rings[msg.ring]
        if not gen.header.begin_read(msg.ring, msg.slot, msg.seq, _LOCK_S):
            return None  # overwritten, or the child stopped while holding the lock
        view = np.ndarray(msg.shape, np.dtype(msg.dtype), shm.buf, msg.slot * slot_bytes)
        image = np.copy(view)
        del view
        gen.header.end_read(msg.ring, msg.slot, _LOCK_S)
        return image
