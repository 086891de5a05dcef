"""The camera child process: opens the source, grabs, and hands frames to the parent through
the shared-memory ring (inspectd.capture.ring), announcing each on the pipe
(inspectd.capture.protocol).

- Free run: grabs continuously. A live camera must not block: when every slot is unread, the
  oldest unread frame is overwritten and counted as dropped. A replay (a folder, a video file:
  ``is_live`` false) waits for a free slot instead, so no frame is lost.
- Trigger mode: one grab per ``Grab`` request, in steps of at most ``CHILD_GRAB_S`` with a
  heartbeat between them, answered with a frame or ``GrabTimedOut``.

The heartbeat is beaten around every grab and while idle: the parent's watchdog kills a child
whose heartbeat is too old.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import structlog

from inspectd.capture.base import CaptureError, CaptureSource, CaptureTimeout, EndOfStream
from inspectd.capture.protocol import (
    Ended,
    Failed,
    FrameReady,
    Grab,
    GrabTimedOut,
    NewRing,
    Opened,
    OpenFailed,
    Stop,
)
from inspectd.capture.ring import Header, ring_name, slot_size
from inspectd.frame import Frame

log = structlog.get_logger(__name__)

CHILD_GRAB_S = 0.5  # longest single grab call between two heartbeats
_WAIT_S = 0.0005  # a replay's poll for a free slot or a read ring

SourceFactory = Callable[[], CaptureSource]


def is_live(source: CaptureSource) -> bool:
    """A live camera drops the oldest unread frame when the ring is full; a replay waits."""
    live = getattr(source, "is_live", None)  # an optional attribute of sources, not config
    if live is not None:
        return bool(live)
    return source.camera.source != "folder"


class Child:
    def __init__(self, conn: Any, header: Header, header_name: str, triggered: bool, parent: int):
        self.conn = conn
        self.h = header
        self.header_name = header_name
        self.triggered = triggered
        self.parent = parent
        self.ring: shared_memory.SharedMemory | None = None
        self.ring_number = -1
        self.slot_bytes = 0
        self.seq = 0
        self.live = True
        self.stopping = False

    def beat(self) -> None:
        self.h.beat(time.monotonic())

    def parent_gone(self) -> bool:
        return os.getppid() != self.parent

    def stop_requested(self) -> bool:
        while not self.stopping and self.conn.poll():
            if isinstance(self.conn.recv(), Stop):
                self.stopping = True
        return self.stopping or self.parent_gone()

    def run(self, factory: SourceFactory) -> int:
        try:
            source = factory()
            source.open()
        except Exception as exc:
            reason = str(exc) if isinstance(exc, CaptureError) else f"{type(exc).__name__}: {exc}"
            self.conn.send(OpenFailed(reason))
            return 2
        self.live = is_live(source)
        self.conn.send(Opened(source.camera))
        try:
            return self._trigger_loop(source) if self.triggered else self._free_loop(source)
        except (BrokenPipeError, EOFError, ConnectionResetError):
            return 0  # the parent is gone
        except Exception as exc:
            log.exception("camera.child.failed")
            try:
                self.conn.send(Failed(f"{type(exc).__name__}: {exc}"))
            except OSError:
                pass
            return 3
        finally:
            source.close()

    def _free_loop(self, source: CaptureSource) -> int:
        while True:
            self.beat()
            if self.stop_requested():
                return 0
            try:
                frame = source.grab(timeout=CHILD_GRAB_S)
            except CaptureTimeout:
                continue
            except EndOfStream:
                self.conn.send(Ended(None))
                return 0
            if not self.publish(frame, None):
                return 0

    def _trigger_loop(self, source: CaptureSource) -> int:
        while True:
            self.beat()
            if self.parent_gone():
                return 0
            if not self.conn.poll(0.1):
                continue
            match self.conn.recv():
                case Stop():
                    return 0
                case Grab(req_id=req_id, timeout_s=timeout_s):
                    if not self._answer(source, req_id, timeout_s):
                        return 0

    def _answer(self, source: CaptureSource, req_id: int, timeout_s: float) -> bool:
        """One trigger request: a frame, or GrabTimedOut. False when the child is to end."""
        deadline = time.monotonic() + timeout_s
        frame = None
        while frame is None:
            self.beat()
            try:
                step = min(CHILD_GRAB_S, max(deadline - time.monotonic(), 0.0))
                frame = source.grab(timeout=step)
            except CaptureTimeout:
                if time.monotonic() >= deadline:
                    break
            except EndOfStream:
                self.conn.send(Ended(req_id))
                return False
        if frame is None:
            self.conn.send(GrabTimedOut(req_id))
            return True
        return self.publish(frame, req_id)

    def _old_ring_read(self) -> bool:
        """Before a bigger ring replaces this one: the parent reads a slot only while the
        header names its ring, so a replay waits until the parent has read every frame in it
        (a live camera does not wait: its unread ones are counted as dropped at the switch).
        False when told to stop meanwhile."""
        while not self.live:
            if not self.h.has_unread():
                return True
            self.beat()
            if self.stop_requested():
                return False
            time.sleep(_WAIT_S)
        return True

    def _new_ring(self, nbytes: int) -> bool:
        if self.ring is not None and not self._old_ring_read():
            return False
        slot_bytes = slot_size(nbytes)
        number = self.ring_number + 1
        ring = shared_memory.SharedMemory(
            name=ring_name(self.header_name, number), create=True, size=slot_bytes * self.h.slots
        )
        if self.ring is not None:
            self.ring.close()  # the parent unlinks it when it reads the message below
        self.ring, self.ring_number, self.slot_bytes = ring, number, slot_bytes
        self.h.switch_ring(number)
        self.conn.send(NewRing(number, ring.name, slot_bytes))
        return True

    def _claim(self) -> int | None:
        while True:
            slot = self.h.claim(self.live)
            if slot is not None:
                return slot
            self.beat()  # a replay waits for the parent to take a frame
            if self.stop_requested():
                return None
            time.sleep(_WAIT_S)

    def publish(self, frame: Frame, req_id: int | None) -> bool:
        self.seq += 1
        slot, shape, dtype = None, None, None
        if frame.image is not None:
            image = np.ascontiguousarray(frame.image)
            if self.ring is None or image.nbytes > self.slot_bytes:
                if not self._new_ring(image.nbytes):
                    return False
            slot = self._claim()
            if slot is None:
                return False
            shape, dtype = image.shape, image.dtype.str
            assert self.ring is not None
            np.ndarray(image.shape, image.dtype, self.ring.buf, slot * self.slot_bytes)[...] = image
            self.h.fill(slot, self.seq)
        self.conn.send(
            FrameReady(
                ring=self.ring_number,
                slot=slot,
                seq=self.seq,
                shape=shape,
                dtype=dtype,
                frame_id=frame.frame_id,
                part_id=frame.part_id,
                t_capture=frame.t_capture,
                t_mono=frame.t_mono,
                camera=frame.camera,
                error=frame.error,
                extra=frame.extra,
                req_id=req_id,
            )
        )
        return True


def child_main(
    factory: SourceFactory,
    conn: Any,
    header_name: str,
    slots: int,
    lock: Any,
    triggered: bool,
    parent: int,
    log_settings: tuple[str, str] | None = None,
) -> None:
    """The child process's entry point (multiprocessing "spawn")."""
    import sys

    from inspectd.logs import configure_logging

    # The parent decides when the camera stops (Ctrl-C and systemd's SIGTERM reach the whole
    # group); a child whose parent died notices and ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A spawned child starts with structlog's defaults: log at the station's level and in its
    # format (the parent's resolved one; both write to the inherited stderr, i.e. the journal).
    level, fmt = log_settings or ("info", "auto")
    configure_logging(level, fmt)  # type: ignore[arg-type]
    structlog.contextvars.bind_contextvars(process="camera")
    shm = shared_memory.SharedMemory(name=header_name)
    header = Header(shm.buf, slots, lock)
    child = Child(conn, header, header_name, triggered, parent)
    code = child.run(factory)
    if child.ring is not None:
        child.ring.close()
    header.release()
    try:
        shm.close()
    except BufferError:  # a view is still held; the mapping goes with the process
        pass
    sys.exit(code)
