"""The parent's side of a camera child process: start it, watch it, kill and restart it.

A watchdog thread checks the child's liveness and heartbeat every ``POLL_S``; a child that
died, or whose heartbeat is older than ``heartbeat_timeout_s`` (stalled: a hung driver,
SIGSTOP), is killed with SIGKILL, ``camera.offline`` is logged with the reason, and a new child
is started after the restart backoff (``RestartBackoff``), logging ``camera.restarted`` and
``camera.online``. A child that ends with exit code 0 reached the end of its stream (or was
stopped): nothing to restart.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any, Literal

import structlog

from inspectd.capture.base import CaptureError
from inspectd.capture.child import SourceFactory, child_main
from inspectd.capture.protocol import Opened, OpenFailed, Stop
from inspectd.capture.ring import Header, header_size, ring_name
from inspectd.frame import CameraMeta
from inspectd.logs import logging_settings

log = structlog.get_logger(__name__)

POLL_S = 0.05  # watchdog period; longest pipe wait in one step
STABLE_S = 10.0  # a child up this long resets the restart backoff

LinkState = Literal["starting", "online", "offline"]


@dataclass
class RestartBackoff:
    """Seconds to wait before the next restart: ``initial_s``, doubled after each wait up to
    ``max_s``; back to ``initial_s`` once a child stayed up for ``STABLE_S``."""

    initial_s: float
    max_s: float
    wait_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.max_s = max(self.max_s, self.initial_s)
        self.wait_s = self.initial_s

    def waited(self) -> None:
        self.wait_s = min(self.wait_s * 2, self.max_s)

    def reset(self) -> None:
        self.wait_s = self.initial_s


class Generation:
    """One child process and the segments it shares with the parent."""

    def __init__(self, proc: Any, conn: Any, shm: shared_memory.SharedMemory, header: Header):
        self.proc = proc
        self.conn = conn
        self.shm = shm
        self.header = header
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
        last = self.header.ring_number if not self.header.closed else 0
        for number in range(last + 1):
            if number in self.rings:
                continue
            try:
                shared_memory.SharedMemory(name=ring_name(self.shm.name, number)).unlink()
            except FileNotFoundError:
                pass
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Unmap everything; only by the thread that reads frames (or once nobody does)."""
        for number in list(self.rings):
            self._drop_ring(number)
        self.header.release()
        try:
            self.shm.close()
        except BufferError:  # a reader still holds a view; the mapping goes with it
            pass
        self.conn.close()


class Supervisor:
    """The current child (``gen``), its state and the watchdog thread that restarts it.

    ``reader`` is held by whoever reads frames: dead generations are unmapped under it, never
    while a slot is being copied out.
    """

    def __init__(
        self,
        factory: SourceFactory,
        *,
        name: str,
        triggered: bool,
        slots: int,
        heartbeat_timeout_s: float,
        backoff: RestartBackoff,
        open_timeout_s: float,
    ) -> None:
        self.factory = factory
        self.triggered = triggered
        self.slots = slots
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.backoff = backoff
        self.open_timeout_s = open_timeout_s
        self.camera = CameraMeta(source=name)
        self.gen: Generation | None = None
        self.state: LinkState = "starting"
        self.reason: str | None = None
        self.episode = 0  # offline episodes so far
        self.restarts = 0
        self.ended = False  # the source has no more frames: nothing to restart
        self.closing = threading.Event()
        self.reader = threading.Lock()
        self._dead: list[Generation] = []  # killed, to be unmapped under ``reader``
        self._dropped_before = 0  # by children that are gone
        self._ctx = multiprocessing.get_context("spawn")  # a threaded parent is never forked
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    # -- child processes ----------------------------------------------------------------------

    def _spawn(self) -> Generation:
        shm = shared_memory.SharedMemory(create=True, size=header_size(self.slots))
        lock = self._ctx.Lock()
        header = Header(shm.buf, self.slots, lock)
        header.reset(time.monotonic())
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=child_main,
            args=(
                self.factory,
                child_conn,
                shm.name,
                self.slots,
                lock,
                self.triggered,
                os.getpid(),
                logging_settings(),
            ),
            name=f"inspectd-camera-{self.camera.source}",
            daemon=True,
        )
        gen = Generation(proc, parent_conn, shm, header)
        try:
            proc.start()
        except Exception:
            gen.unlink()
            gen.close()
            raise
        finally:
            child_conn.close()
        return gen

    def _await_open(self, gen: Generation) -> CameraMeta:
        """The child's camera once it opened its source; CaptureError when it could not."""
        deadline = time.monotonic() + self.open_timeout_s
        while True:
            try:
                if gen.conn.poll(POLL_S):
                    match gen.conn.recv():
                        case Opened(camera=camera):
                            return camera
                        case OpenFailed(reason=reason):
                            raise CaptureError(reason)
                    continue
            except (EOFError, OSError):
                pass
            if not gen.proc.is_alive():
                raise CaptureError(
                    f"the camera process ended before the camera opened "
                    f"({exit_reason(gen.proc.exitcode)})"
                )
            if time.monotonic() > deadline:
                raise CaptureError(f"the camera did not open within {self.open_timeout_s:g} s")
            if self.closing.is_set():
                raise CaptureError("closing")

    def kill(self, gen: Generation) -> None:
        """SIGKILL (a stopped or hung child ignores anything gentler) and unlink its segments;
        unmapping is left to the reading thread."""
        if not gen.header.closed:
            self._dropped_before += gen.header.dropped
        gen.dead = True
        if gen.proc.is_alive():
            try:
                os.kill(gen.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        gen.proc.join(timeout=5.0)
        gen.unlink()
        self._dead.append(gen)

    def _start_child(self) -> Generation:
        gen = self._spawn()
        try:
            camera = self._await_open(gen)
        except CaptureError:
            self.kill(gen)
            raise
        self.camera = camera
        gen.online_since = time.monotonic()
        return gen

    def _went_online(self, gen: Generation) -> None:
        self.gen = gen
        self.state, self.reason = "online", None
        log.info(
            "camera.online",
            pid=gen.pid,
            source=self.camera.source,
            serial=self.camera.serial,
            isolated=True,
        )

    def start(self) -> None:
        """The first child, then the watchdog; CaptureError when the source cannot open."""
        self.closing.clear()
        self._went_online(self._start_child())
        self._thread = threading.Thread(target=self._watch, name="camera-watchdog", daemon=True)
        self._thread.start()

    def threads(self) -> dict[str, threading.Thread | None]:
        return {"camera-watchdog": self._thread}

    def online(self) -> Generation | None:
        """The current child while it is online."""
        gen = self.gen
        if self.state != "online" or gen is None or gen.dead:
            return None
        return gen

    def dropped(self) -> int:
        """Frames dropped by every child so far (a live camera's overwritten unread ones)."""
        gen = self.gen
        dropped = self._dropped_before
        if gen is not None and not gen.dead and not gen.header.closed:
            dropped += gen.header.dropped
        return dropped

    # -- the watchdog -------------------------------------------------------------------------

    def _fault(self, gen: Generation) -> str | None:
        code = gen.proc.exitcode
        if code == 0:
            self.ended = True  # end of stream (or stopped): nothing to restart
            return None
        if code is not None:
            return gen.failure or f"the camera process {exit_reason(code)}"
        age = time.monotonic() - gen.header.heartbeat
        if age > self.heartbeat_timeout_s:
            return f"no heartbeat from the camera process for {age:.1f} s (stalled)"
        return None

    def _watch(self) -> None:
        while not self.closing.wait(POLL_S):
            gen = self.gen
            if gen is None or self.ended:
                continue
            reason = self._fault(gen)
            if reason is None:
                if time.monotonic() - gen.online_since > STABLE_S:
                    self.backoff.reset()
                continue
            self._restart(gen, reason)
            if self.reader.acquire(blocking=False):  # nobody reads: unmap the dead now
                try:
                    self.reap()
                finally:
                    self.reader.release()

    def _restart(self, gen: Generation, reason: str) -> None:
        t_offline = time.monotonic()
        self.reason, self.state = reason, "offline"
        self.episode += 1
        log.error("camera.offline", reason=reason, pid=gen.pid, restart_in_s=self.backoff.wait_s)
        self.kill(gen)
        while not self.closing.wait(self.backoff.wait_s):
            self.backoff.waited()
            self.state = "starting"
            try:
                new = self._start_child()
            except CaptureError as exc:
                self.state = "offline"
                log.error(
                    "camera.restart_failed",
                    error=str(exc),
                    reason=reason,
                    restart_in_s=self.backoff.wait_s,
                )
                continue
            self.restarts += 1
            self.gen = new
            self.state, self.reason = "online", None
            log.warning(
                "camera.restarted",
                pid=new.pid,
                restarts=self.restarts,
                offline_s=round(time.monotonic() - t_offline, 2),
                reason=reason,
            )
            log.info(
                "camera.online",
                pid=new.pid,
                source=self.camera.source,
                serial=self.camera.serial,
                isolated=True,
            )
            return

    def reap(self) -> None:
        """Unmap killed generations; only under ``reader``."""
        while self._dead:
            self._dead.pop().close()

    def stop(self) -> None:
        """Stop the watchdog, ask the child to stop, then kill it and unmap everything."""
        self.closing.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        gen, self.gen = self.gen, None
        if gen is not None and not gen.dead:
            try:
                gen.conn.send(Stop())
            except (OSError, ValueError):
                pass
            gen.proc.join(timeout=2.0)
            self.kill(gen)
        if self.reader.acquire(timeout=5.0):
            try:
                self.reap()
            finally:
                self.reader.release()
        self._thread = None


def exit_reason(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
