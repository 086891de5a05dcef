"""Telling systemd how the station is: sd_notify(3) without libsystemd.

systemd gives a ``Type=notify`` (or ``notify-reload``) service ``$NOTIFY_SOCKET``, a datagram
socket (a leading ``@`` is the Linux abstract namespace), and with ``WatchdogSec=`` also
``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``. One datagram carries newline-separated
``KEY=VALUE`` assignments: ``READY=1``, ``STATUS=…`` (the line ``systemctl status`` shows),
``WATCHDOG=1``, ``STOPPING=1``, ``RELOADING=1`` with ``MONOTONIC_USEC=`` (what
``Type=notify-reload`` asks for; plain ``Type=notify`` accepts it too), ``EXTEND_TIMEOUT_USEC=``
(more time for the step in progress, systemd >= 236). Without ``$NOTIFY_SOCKET`` every call is a
no-op.

Sending never blocks and never raises: a full or missing socket must not stall the station, so
a datagram that cannot go out is dropped and logged once. No lock either: ``stopping()`` is
called from a signal handler, which may interrupt another send on the same thread.

``ServiceWatch`` is the loop that runs while the station does: ``WATCHDOG=1`` every half
``WATCHDOG_USEC`` as long as no thread is stalled or dead (so systemd restarts a hung
station after ``WatchdogSec=``), and a fresh ``STATUS=`` line every few seconds.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import structlog

log = structlog.get_logger(__name__)

_MAX_STATUS = 1000  # characters; systemctl shows one line
EXTEND_EVERY_S = 30.0  # each EXTEND_TIMEOUT_USEC grants twice this
EXTEND_LIMIT_S = 3600.0  # a step still running after this is left to systemd's timeout


class Notifier:
    """Datagrams to systemd's notification socket; ``Notifier()`` is a silent one."""

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        self.address = address  # as in $NOTIFY_SOCKET
        self._target = _socket_address(address) if address else None
        if address and self._target is None:
            log.warning(
                "notify.unsupported_socket",
                address=address,
                detail="only absolute paths and @abstract names are supported",
            )
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._failed: set[int] = set()  # errnos already logged
        self._stopping = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """From ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` (the watchdog is
        ours only when that pid is ours, or not given)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "").strip()
        pid = env.get("WATCHDOG_PID", "").strip()
        if raw:
            try:
                usec = int(raw)
            except ValueError:
                log.warning("notify.bad_watchdog_usec", value=raw)
        if usec is not None and pid and pid != str(os.getpid()):
            log.info("notify.watchdog_not_ours", watchdog_pid=pid, pid=os.getpid())
            usec = None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half of ``WatchdogSec=``, as sd_watchdog_enabled(3)
        advises; None when systemd does not watch."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2e6

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; True if it went out."""
        if self._target is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self._target)
        except OSError as exc:
            if exc.errno not in self._failed:  # once per kind: the watchdog would repeat it
                self._failed.add(exc.errno or 0)
                log.warning("notify.send_failed", address=self.address, error=str(exc))
            return False
        return True

    def status(self, text: str) -> bool:
        return self.send(_status(text))

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (at start, and to end a reload); ignored once stopping."""
        if self._stopping:
            return False
        return self.send("READY=1", *([_status(status)] if status else []))

    def reloading(self, status: str = "reloading") -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (Type=notify-reload); ``ready()`` ends it."""
        if self._stopping:
            return False
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", _status(status))

    def stopping(self, status: str = "stopping") -> bool:
        """``STOPPING=1`` the first time; later calls only change the status."""
        if self._stopping:
            return self.status(status)
        self._stopping = True
        return self.send("STOPPING=1", _status(status))

    @property
    def is_stopping(self) -> bool:
        return self._stopping

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    @contextmanager
    def extending(
        self, status: str, *, every_s: float = EXTEND_EVERY_S, limit_s: float = EXTEND_LIMIT_S
    ) -> Iterator[None]:
        """Keep asking systemd for more time (``EXTEND_TIMEOUT_USEC``) while a slow step runs:
        building a TensorRT engine at the first start on a new GPU takes minutes, longer than
        ``TimeoutStartSec=``. Each message grants ``2 * every_s``; they stop after ``limit_s``,
        so a step that hangs still ends in systemd's timeout."""
        if not self.enabled:
            yield
            return
        done = threading.Event()

        def extend() -> None:
            deadline = time.monotonic() + limit_s
            while not self._stopping and time.monotonic() < deadline:
                self.send(f"EXTEND_TIMEOUT_USEC={int(every_s * 2e6)}", _status(status))
                if done.wait(every_s):
                    return

        thread = threading.Thread(target=extend, name="notify-extend", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | None:
    if address.startswith("@"):
        return "\0" + address[1:]  # abstract namespace
    if address.startswith("/"):
        return address
    return None  # vsock: and relative paths are not for us


def _status(text: str) -> str:
    line = " ".join(text.split())  # one line: a newline would start another assignment
    return "STATUS=" + line[:_MAX_STATUS]


class ServiceWatch:
    """While the station runs: ``WATCHDOG=1`` every ``notifier.watchdog_interval_s`` unless a
    pipeline thread is stalled, ``STATUS=`` every ``status_interval_s``, and a log line when a
    stall begins and when it ends (with or without systemd).

    ``stalled()`` returns thread -> seconds without progress (``Pipeline.stalled``); ``status()``
    the line for ``systemctl status``. A stall that clears lets the pings resume: if systemd has
    not restarted the station by then, it is working again.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        stalled: Callable[[], dict[str, float]],
        status: Callable[[], str],
        status_interval_s: float,
    ) -> None:
        self.notifier = notifier
        self._stalled, self._status = stalled, status
        self.status_interval_s = status_interval_s
        interval = notifier.watchdog_interval_s
        self.tick_s = min(interval, status_interval_s) if interval else status_interval_s
        self.pings = 0
        self.stalls: dict[str, float] = {}  # the latest check's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="service-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        next_ping = time.monotonic()
        next_status = next_ping + self.status_interval_s  # READY=1 carried the first one
        interval = self.notifier.watchdog_interval_s
        while True:
            now = time.monotonic()
            try:
                self._check(now, interval is not None and now >= next_ping, now >= next_status)
            except Exception:  # telling systemd must never take the station down
                log.exception("service_watch.failed")
            if interval is not None and now >= next_ping:
                next_ping = now + interval
            if now >= next_status:
                next_status = now + self.status_interval_s
            wait = min(next_ping, next_status) if interval is not None else next_status
            if self._stop.wait(max(0.0, wait - time.monotonic())):
                return

    def _check(self, now: float, ping: bool, status: bool) -> None:
        stalls = self._stalled()
        if stalls and not self.stalls:
            log.error(
                "pipeline.stalled",
                threads=stalls,
                detail="holding work without progress, or ended; systemd watchdog pings withheld",
            )
        elif self.stalls and not stalls:
            log.warning("pipeline.resumed", was=self.stalls)
        changed = bool(stalls) != bool(self.stalls)
        self.stalls = stalls
        if stalls:
            if status or changed:
                names = ", ".join(f"{t} for {s:.0f} s" for t, s in stalls.items())
                self.notifier.status(f"stalled: no progress in {names}; watchdog pings withheld")
            return
        if ping and self.notifier.watchdog():
            self.pings += 1
        if (status or changed) and not self.notifier.is_stopping:  # stop() says what it does
            self.notifier.status(self._status())
