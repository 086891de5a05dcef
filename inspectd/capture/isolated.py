"""Any capture source in a child process that is watched, killed and restarted.

Camera drivers hang: harvesters on device loss, ``cv2.VideoCapture.read()`` on an RTSP drop or
a USB unplug, and neither can be interrupted from Python. So the source runs in a child process
(multiprocessing "spawn": a threaded parent is never forked), built there by a picklable
factory (``functools.partial(build_source, camera_config)``), and the parent only reads frames.

Frames travel through a **shared-memory ring**: ``slots`` slots, each as big as the largest
frame seen so far (the child sizes it from the first frame and makes a new, bigger ring when a
frame does not fit; a replay first waits until the parent has read the old ring, a live
camera's unread frames there count as dropped). Images are never pickled: the child copies a
frame into a free slot and sends a small message over a pipe (slot, sequence number, shape,
dtype, frame id, part id, timestamps, error, camera meta); the parent copies the slot out
(``np.copy``) and frees it.
A small header segment holds the child's heartbeat (``time.monotonic()``, system-wide on
Linux), the dropped-frame count and per-slot state and sequence number; slot state changes
happen under a multiprocessing lock (a few microseconds).

- Free run: the child grabs continuously. A live camera must not block: when every slot is
  unread, the oldest unread frame is overwritten and counted in ``dropped``. A replay (a folder,
  a video file: ``is_live`` false) waits for a free slot instead, so no frame is lost.
- Trigger mode: ``grab(timeout)`` sends one request over the pipe; the child grabs (in steps
  of at most 0.5 s, beating the heartbeat between them) and answers with a frame or a timeout.

**Watchdog.** The child beats the heartbeat around every grab and while idle. A supervisor
thread in the parent checks it and the child's liveness every 50 ms; a child that died, or
whose heartbeat is older than ``heartbeat_timeout_s`` (stalled: a hung driver, SIGSTOP), is
killed with SIGKILL, ``camera.offline`` is logged with the reason, and a new child is started
after ``restart_backoff_s`` (doubling per failed start up to ``restart_backoff_max_s``; back
to the start value after a child stayed up for ``_STABLE_S``), logging ``camera.restarted`` and
``camera.online``. ``heartbeat_timeout_s`` must exceed the longest single grab call of the
source (the child never asks for more than 0.5 s per call).

**While offline** ``grab()`` never hangs and never raises: it returns a Frame without image and
with ``error="camera_offline: <reason>"``, so the part becomes an ERROR verdict.
- Trigger mode: every request gets that answer at once (never silence).
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
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import structlog

from inspectd.capture.base import CaptureError, CaptureSource, CaptureTimeout, EndOfStream
from inspectd.frame import CameraMeta, Frame
from inspectd.logs import logging_settings

log = structlog.get_logger(__name__)

OFFLINE = "camera_offline"  # how an offline camera's ERROR verdicts start
DEFAULT_SLOTS = 4
_POLL_S = 0.05  # supervisor period; longest pipe wait in one step
_CHILD_GRAB_S = 0.5  # longest single grab call in the child between two heartbeats
_LOCK_S = 0.5  # longest wait for the ring lock (a stopped child may hold it)
_STABLE_S = 10.0  # a child up this long resets the restart backoff
_FREE, _READY, _READING, _WRITING = 0, 1, 2, 3

SourceFactory = Callable[[], CaptureSource]


def _header_size(slots: int) -> int:
    return 8 + 8 * (2 + 2 * slots)


class _Header:
    """Views on the header segment: heartbeat, dropped, ring number, slot states and seqs."""

    def __init__(self, shm: shared_memory.SharedMemory, slots: int) -> None:
        self.shm = shm
        self.hb: np.ndarray | None = np.ndarray((1,), np.float64, shm.buf, 0)
        self.ints: np.ndarray | None = np.ndarray((2 + 2 * slots,), np.int64, shm.buf, 8)
        self.slots = slots

    @property
    def states(self) -> np.ndarray:
        assert self.ints is not None
        return self.ints[2 : 2 + self.slots]

    @property
    def seqs(self) -> np.ndarray:
        assert self.ints is not None
        return self.ints[2 + self.slots :]

    def close(self) -> None:
        self.hb = self.ints = None
        try:
            self.shm.close()
        except BufferError:  # a reader still holds a view; the mapping goes with it
            pass


def _ring_name(header_name: str, number: int) -> str:
    return f"{header_name}_r{number}"


# -- the child --------------------------------------------------------------------------------


def _is_live(source: CaptureSource) -> bool:
    """A live camera drops the oldest unread frame when the ring is full; a replay waits."""
    live = getattr(source, "is_live", None)
    if live is not None:
        return bool(live)
    return source.camera.source != "folder"


class _Child:
    def __init__(self, conn: Any, header: _Header, lock: Any, triggered: bool, parent: int):
        self.conn = conn
        self.h = header
        self.lock = lock
        self.triggered = triggered
        self.parent = parent
        self.ring: shared_memory.SharedMemory | None = None
        self.ring_number = -1
        self.slot_bytes = 0
        self.seq = 0
        self.live = True
        self.stopping = False

    def beat(self) -> None:
        assert self.h.hb is not None
        self.h.hb[0] = time.monotonic()

    def parent_gone(self) -> bool:
        return os.getppid() != self.parent

    def stop_requested(self) -> bool:
        while not self.stopping and self.conn.poll():
            if self.conn.recv() == "stop":
                self.stopping = True
        return self.stopping or self.parent_gone()

    def run(self, factory: SourceFactory) -> int:
        try:
            source = factory()
            source.open()
        except Exception as exc:
            reason = str(exc) if isinstance(exc, CaptureError) else f"{type(exc).__name__}: {exc}"
            self.conn.send(("open_failed", reason))
            return 2
        self.live = _is_live(source)
        self.conn.send(("opened", source.camera))
        try:
            return self._trigger_loop(source) if self.triggered else self._free_loop(source)
        except (BrokenPipeError, EOFError, ConnectionResetError):
            return 0  # the parent is gone
        except Exception as exc:
            log.exception("camera.child.failed")
            try:
                self.conn.send(("failed", f"{type(exc).__name__}: {exc}"))
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
                frame = source.grab(timeout=_CHILD_GRAB_S)
            except CaptureTimeout:
                continue
            except EndOfStream:
                self.conn.send(("eos", None))
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
            msg = self.conn.recv()
            if msg == "stop":
                return 0
            _, req_id, timeout = msg
            deadline = time.monotonic() + timeout
            frame = None
            while frame is None:
                self.beat()
                try:
                    step = min(_CHILD_GRAB_S, max(deadline - time.monotonic(), 0.0))
                    frame = source.grab(timeout=step)
                except CaptureTimeout:
                    if time.monotonic() >= deadline:
                        break
                except EndOfStream:
                    self.conn.send(("eos", req_id))
                    return 0
            if frame is None:
                self.conn.send(("timeout", req_id))
            elif not self.publish(frame, req_id):
                return 0

    def _old_ring_read(self) -> bool:
        """Before a bigger ring replaces this one: the parent reads a slot only while the
        header names its ring, so a replay waits until the parent has read every frame in it
        (a live camera does not wait: its unread ones are counted as dropped at the switch).
        False when told to stop meanwhile."""
        while not self.live:
            with self.lock:
                states = self.h.states
                if not np.any((states == _READY) | (states == _READING)):
                    return True
            self.beat()
            if self.stop_requested():
                return False
            time.sleep(0.0005)
        return True

    def _new_ring(self, nbytes: int) -> bool:
        if self.ring is not None and not self._old_ring_read():
            return False
        # 4 KiB aligned and a quarter bigger: a slightly bigger frame later needs no new ring
        slot_bytes = -(-int(nbytes * 1.25) // 4096) * 4096
        number = self.ring_number + 1
        ring = shared_memory.SharedMemory(
            name=_ring_name(self.h.shm.name, number), create=True, size=slot_bytes * self.h.slots
        )
        if self.ring is not None:
            self.ring.close()  # the parent unlinks it when it reads the message below
        self.ring, self.ring_number, self.slot_bytes = ring, number, slot_bytes
        with self.lock:
            assert self.h.ints is not None
            self.h.ints[0] += int(np.count_nonzero(self.h.states == _READY))  # never read
            self.h.ints[1] = number
            self.h.states[:] = _FREE
        self.conn.send(("ring", number, ring.name, slot_bytes))
        return True

    def _claim(self) -> int | None:
        states, seqs = self.h.states, self.h.seqs
        while True:
            with self.lock:
                free = np.flatnonzero(states == _FREE)
                if free.size:
                    slot = int(free[0])
                    states[slot] = _WRITING
                    return slot
                if self.live:
                    ready = np.flatnonzero(states == _READY)
                    if ready.size:
                        slot = int(ready[np.argmin(seqs[ready])])
                        states[slot] = _WRITING
                        assert self.h.ints is not None
                        self.h.ints[0] += 1  # dropped
                        return slot
            self.beat()  # a replay waits for the parent to take a frame
            if self.stop_requested():
                return None
            time.sleep(0.0005)

    def publish(self, frame: Frame, req_id: int | None) -> bool:
        self.seq += 1
        slot, shape, dtype = -1, None, None
        if frame.image is not None:
            image = np.ascontiguousarray(frame.image)
            if self.ring is None or image.nbytes > self.slot_bytes:
                if not self._new_ring(image.nbytes):
                    return False
            claimed = self._claim()
            if claimed is None:
                return False
            slot, shape, dtype = claimed, image.shape, image.dtype.str
            assert self.ring is not None
            np.ndarray(image.shape, image.dtype, self.ring.buf, slot * self.slot_bytes)[...] = image
            with self.lock:
                self.h.seqs[slot] = self.seq
                self.h.states[slot] = _READY
        meta = (frame.frame_id, frame.part_id, frame.t_capture, frame.t_mono, frame.camera,
                frame.error, frame.extra)  # fmt: skip
        self.conn.send(("frame", self.ring_number, slot, self.seq, shape, dtype, meta, req_id))
        return True


def _child_main(
    factory: SourceFactory, conn: Any, header_name: str, slots: int, lock: Any,
    triggered: bool, parent: int, log_settings: tuple[str, str] | None = None,
) -> None:  # fmt: skip
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
    header = _Header(shared_memory.SharedMemory(name=header_name), slots)
    child = _Child(conn, header, lock, triggered, parent)
    code = child.run(factory)
    if child.ring is not None:
        child.ring.close()
    header.close()
    sys.exit(code)


# -- the parent -------------------------------------------------------------------------------


class _Generation:
    """One child process and what it shares with the parent."""

    def __init__(self, proc: Any, conn: Any, header: _Header, lock: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.header = header
        self.lock = lock
        self.rings: dict[int, tuple[shared_memory.SharedMemory, int]] = {}
        self.dead = False
        self.online_since = 0.0
        self.failure: str | None = None  # what the child said when its source broke

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def attach(self, number: int, name: str, slot_bytes: int) -> None:
        for old in list(self.rings):
            self._drop_ring(old)
        self.rings[number] = (shared_memory.SharedMemory(name=name), slot_bytes)

    def _drop_ring(self, number: int) -> None:
        shm, _ = self.rings.pop(number)
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
        shm.close()

    def unlink(self) -> None:
        """Remove the segments' names (safe while mapped); the child may have made rings the
        parent never heard of, so every ring number up to the header's is tried."""
        name = self.header.shm.name
        last = int(self.header.ints[1]) if self.header.ints is not None else 0
        for number in range(last + 1):
            if number in self.rings:
                continue
            try:
                shared_memory.SharedMemory(name=_ring_name(name, number)).unlink()
            except FileNotFoundError:
                pass
        try:
            self.header.shm.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Unmap everything; only by the thread that reads frames (or once nobody does)."""
        for number in list(self.rings):
            self._drop_ring(number)
        self.header.close()
        self.conn.close()


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
        if heartbeat_timeout_s <= _CHILD_GRAB_S:
            raise ValueError(f"heartbeat_timeout_s must be > {_CHILD_GRAB_S}, got {heartbeat_timeout_s}")
        self.factory = factory
        self.triggered = triggered
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = max(restart_backoff_max_s, restart_backoff_s)
        self.open_timeout_s = open_timeout_s
        self.slots = slots
        self.camera = CameraMeta(source=name)
        self._ctx = multiprocessing.get_context("spawn")
        self._gen: _Generation | None = None
        self._dead: list[_Generation] = []  # killed, to be unmapped by the reading thread
        self._state = "starting"
        self._reason: str | None = None
        self._episode = 0  # offline episodes so far
        self._reported_episode = 0  # the last episode free run answered at once
        self._restarts = 0
        self._dropped_before = 0  # by children that are gone
        self._ended = False
        self._closing = threading.Event()
        self._reader = threading.Lock()  # held by grab(); dead generations are unmapped under it
        self._supervisor: threading.Thread | None = None
        self._req_ids = itertools.count(1)
        self._offline_ids = itertools.count(1)

    @classmethod
    def for_config(cls, camera_cfg: Any, build: Callable[[Any], CaptureSource]) -> IsolatedSource:
        """The camera a config describes (``build(camera_cfg)`` in the child), with the config's
        ``isolate`` section (defaults where an attribute is missing)."""
        iso = getattr(camera_cfg, "isolate", None)
        return cls(
            functools.partial(build, camera_cfg),
            name=str(camera_cfg.source),
            triggered=getattr(camera_cfg, "trigger", "free_run") == "mqtt",
            heartbeat_timeout_s=getattr(iso, "heartbeat_timeout_s", 3.0),
            restart_backoff_s=getattr(iso, "restart_backoff_s", 0.5),
            restart_backoff_max_s=getattr(iso, "restart_backoff_max_s", 30.0),
        )

    # -- child processes ------------------------------------------------------------------

    def _spawn(self) -> _Generation:
        shm = shared_memory.SharedMemory(create=True, size=_header_size(self.slots))
        header = _Header(shm, self.slots)
        assert header.hb is not None and header.ints is not None
        header.ints[:] = 0
        header.hb[0] = time.monotonic()
        lock = self._ctx.Lock()
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child_main,
            args=(
                self.factory, child_conn, shm.name, self.slots, lock, self.triggered,
                os.getpid(), logging_settings(),
            ),  # fmt: skip
            name=f"inspectd-camera-{self.camera.source}",
            daemon=True,
        )
        gen = _Generation(proc, parent_conn, header, lock)
        try:
            proc.start()
        except Exception:
            gen.unlink()
            gen.close()
            raise
        finally:
            child_conn.close()
        return gen

    def _await_open(self, gen: _Generation) -> CameraMeta:
        """The child's camera once it opened its source; CaptureError when it could not."""
        deadline = time.monotonic() + self.open_timeout_s
        while True:
            try:
                if gen.conn.poll(_POLL_S):
                    msg = gen.conn.recv()
                    if msg[0] == "opened":
                        return msg[1]
                    if msg[0] == "open_failed":
                        raise CaptureError(msg[1])
                    continue
            except (EOFError, OSError):
                pass
            if not gen.proc.is_alive():
                raise CaptureError(f"the camera process ended before the camera opened "
                                   f"({_exit_reason(gen.proc.exitcode)})")  # fmt: skip
            if time.monotonic() > deadline:
                raise CaptureError(f"the camera did not open within {self.open_timeout_s:g} s")
            if self._closing.is_set():
                raise CaptureError("closing")

    def _kill(self, gen: _Generation) -> None:
        """SIGKILL (a stopped or hung child ignores anything gentler) and unlink its segments;
        unmapping is left to the reading thread."""
        if gen.header.ints is not None:
            self._dropped_before += int(gen.header.ints[0])
        gen.dead = True
        if gen.proc.is_alive():
            try:
                os.kill(gen.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        gen.proc.join(timeout=5.0)
        gen.unlink()
        self._dead.append(gen)

    def _start_child(self) -> _Generation:
        gen = self._spawn()
        try:
            camera = self._await_open(gen)
        except CaptureError:
            self._kill(gen)
            raise
        self.camera = camera
        gen.online_since = time.monotonic()
        return gen

    def open(self) -> None:
        if self._gen is not None:
            raise RuntimeError("IsolatedSource is open already")
        self._closing.clear()
        self._gen = self._start_child()
        self._state, self._reason = "online", None
        log.info("camera.online", pid=self._gen.pid, source=self.camera.source,
                 serial=self.camera.serial, isolated=True)  # fmt: skip
        self._supervisor = threading.Thread(target=self._supervise, name="camera-watchdog", daemon=True)
        self._supervisor.start()

    # -- the watchdog ---------------------------------------------------------------------

    def _fault(self, gen: _Generation) -> str | None:
        code = gen.proc.exitcode
        if code == 0:
            self._ended = True  # end of stream (or stopped): nothing to restart
            return None
        if code is not None:
            return gen.failure or f"the camera process {_exit_reason(code)}"
        assert gen.header.hb is not None
        age = time.monotonic() - float(gen.header.hb[0])
        if age > self.heartbeat_timeout_s:
            return f"no heartbeat from the camera process for {age:.1f} s (stalled)"
        return None

    def _supervise(self) -> None:
        backoff = self.restart_backoff_s
        while not self._closing.wait(_POLL_S):
            gen = self._gen
            if gen is None or self._ended:
                continue
            reason = self._fault(gen)
            if reason is None:
                if time.monotonic() - gen.online_since > _STABLE_S:
                    backoff = self.restart_backoff_s
                continue
            t_offline = time.monotonic()
            self._reason, self._state = reason, "offline"
            self._episode += 1
            log.error("camera.offline", reason=reason, pid=gen.pid, restart_in_s=backoff)
            self._kill(gen)
            while not self._closing.wait(backoff):
                backoff = min(backoff * 2, self.restart_backoff_max_s)
                self._state = "starting"
                try:
                    new = self._start_child()
                except CaptureError as exc:
                    self._state = "offline"
                    log.error("camera.restart_failed", error=str(exc), reason=reason,
                              restart_in_s=backoff)  # fmt: skip
                    continue
                self._gen = new
                self._restarts += 1
                self._state, self._reason = "online", None
                log.warning("camera.restarted", pid=new.pid, restarts=self._restarts,
                            offline_s=round(time.monotonic() - t_offline, 2), reason=reason)  # fmt: skip
                log.info("camera.online", pid=new.pid, source=self.camera.source,
                         serial=self.camera.serial, isolated=True)  # fmt: skip
                break
            if self._reader.acquire(blocking=False):  # nobody reads: unmap the dead now
                try:
                    self._reap()
                finally:
                    self._reader.release()

    def _reap(self) -> None:
        while self._dead:
            self._dead.pop().close()

    # -- CaptureSource --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        gen = self._gen
        dropped = self._dropped_before
        ints = gen.header.ints if gen is not None and not gen.dead else None
        if ints is not None:
            dropped += int(ints[0])
        return {
            "state": self._state,
            "reason": self._reason,
            "restarts": self._restarts,
            "dropped": dropped,
            "child_pid": gen.pid if gen is not None and not gen.dead else None,
        }

    def _offline_frame(self) -> Frame:
        n = next(self._offline_ids)
        return Frame(None, -1, f"{OFFLINE}-{n:06d}", time.time(), time.monotonic(), self.camera,
                     error=f"{OFFLINE}: {self._reason or 'camera process not running'}")  # fmt: skip

    def _online(self) -> _Generation | None:
        gen = self._gen
        if self._state != "online" or gen is None or gen.dead:
            return None
        return gen

    def grab(self, timeout: float) -> Frame:
        if self._supervisor is None:
            raise RuntimeError("IsolatedSource.grab() called before open()")
        with self._reader:
            self._reap()
            if self.triggered:
                return self._grab_triggered(timeout)
            return self._grab_free(timeout)

    def _grab_free(self, timeout: float) -> Frame:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            if self._closing.is_set():
                raise EndOfStream
            gen = self._online()
            if gen is None:
                if self._reported_episode != self._episode:
                    self._reported_episode = self._episode  # the part being grabbed: at once
                    return self._offline_frame()
                if time.monotonic() >= deadline:
                    return self._offline_frame()
                time.sleep(_POLL_S)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CaptureTimeout(f"no frame within {timeout:.2f} s")
            frame = self._receive(gen, min(remaining, _POLL_S), None)
            if frame is not None:
                return frame

    def _grab_triggered(self, timeout: float) -> Frame:
        gen = self._online()
        if gen is None:
            if self._ended or self._closing.is_set():
                raise EndOfStream
            return self._offline_frame()
        req_id = next(self._req_ids)
        try:
            gen.conn.send(("grab", req_id, max(timeout, 0.0)))
        except (OSError, ValueError):
            return self._offline_frame()
        deadline = time.monotonic() + max(timeout, 0.0) + 1.0  # the child answers a timeout
        while True:
            if self._closing.is_set():
                raise EndOfStream
            if self._online() is not gen:
                return self._offline_frame()
            if time.monotonic() > deadline:
                raise CaptureTimeout(f"no answer from the camera process within {timeout:.2f} s")
            frame = self._receive(gen, _POLL_S, req_id)
            if frame is not None:
                return frame

    def _receive(self, gen: _Generation, wait: float, req_id: int | None) -> Frame | None:
        """The next message's frame; None when there was none (or it was stale)."""
        try:
            if not gen.conn.poll(wait):
                return None
            msg = gen.conn.recv()
        except (EOFError, OSError):
            if gen.proc.exitcode == 0 or self._ended:
                self._ended = True
                raise EndOfStream from None
            time.sleep(wait)  # the child is gone; the watchdog restarts it
            return None
        kind = msg[0]
        if kind == "frame":
            return self._frame(gen, msg, req_id)
        if kind == "ring":
            gen.attach(msg[1], msg[2], msg[3])
        elif kind == "eos":
            if req_id is None or msg[1] == req_id:
                self._ended = True
                raise EndOfStream
        elif kind == "timeout":
            if msg[1] == req_id:
                raise CaptureTimeout("no frame from the camera within the timeout")
        elif kind == "failed":
            gen.failure = f"the camera failed: {msg[1]}"
        return None

    def _frame(self, gen: _Generation, msg: tuple, req_id: int | None) -> Frame | None:
        _, ring_no, slot, seq, shape, dtype, meta, msg_req = msg
        image = None
        if slot >= 0:
            image = self._copy_slot(gen, ring_no, slot, seq, shape, dtype)
            if image is None:
                return None  # overwritten before it was read: counted as dropped
        if req_id is not None and msg_req != req_id:
            return None  # the answer to a request that was given up on
        frame_id, part_id, t_capture, t_mono, camera, error, extra = meta
        return Frame(image=image, frame_id=frame_id, part_id=part_id, t_capture=t_capture,
                     t_mono=t_mono, camera=camera, error=error, extra=extra)  # fmt: skip

    def _copy_slot(self, gen: _Generation, ring_no: int, slot: int, seq: int,
                   shape: tuple[int, ...], dtype: str) -> np.ndarray | None:  # fmt: skip
        h = gen.header
        if ring_no not in gen.rings or h.ints is None:
            return None
        shm, slot_bytes = gen.rings[ring_no]
        if not gen.lock.acquire(timeout=_LOCK_S):
            return None  # the child stopped while holding it: the watchdog takes over
        try:
            if int(h.ints[1]) != ring_no or h.seqs[slot] != seq or h.states[slot] != _READY:
                return None
            h.states[slot] = _READING
        finally:
            gen.lock.release()
        view = np.ndarray(shape, np.dtype(dtype), shm.buf, slot * slot_bytes)
        image = np.copy(view)
        del view
        if gen.lock.acquire(timeout=_LOCK_S):
            try:
                if int(h.ints[1]) == ring_no:
                    h.states[slot] = _FREE
            finally:
                gen.lock.release()
        return image

    def close(self) -> None:
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10.0)
        gen, self._gen = self._gen, None
        if gen is not None and not gen.dead:
            try:
                gen.conn.send("stop")
            except (OSError, ValueError):
                pass
            gen.proc.join(timeout=2.0)
            self._kill(gen)
        if self._reader.acquire(timeout=5.0):
            try:
                self._reap()
            finally:
                self._reader.release()
        self._supervisor = None


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
