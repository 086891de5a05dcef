"""Where systemd listens for sd_notify datagrams: a real AF_UNIX socket whose address goes in
$NOTIFY_SOCKET of the daemon under test."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable

from support.daemon_process import Daemon


class NotifySocket:
    """Where systemd listens: every datagram, with the monotonic time it arrived."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        if abstract:
            name = f"inspectd-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:  # a short path: sun_path holds 108 bytes, pytest's tmp_path may not fit
            self._dir = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
            self.address = f"{self._dir}/notify"
            self.sock.bind(self.address)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def poll(self, seconds: float) -> None:
        """Receive what arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(
        self,
        match: Callable[[dict[str, str]], bool],
        timeout: float = 30.0,
        daemon: Daemon | None = None,
    ) -> int:
        """Index of the first message that matches, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (_, fields) in enumerate(self.messages):
                if match(fields):
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no such datagram within {timeout} s: {self.texts()}")
            if daemon is not None and not daemon.running:
                self.poll(0.2)
                if not any(match(f) for _, f in self.messages):
                    raise AssertionError(f"daemon exited: {daemon.tail()}\n{self.texts()}")
            self.poll(0.1)

    def texts(self, key: str | None = None) -> list[str]:
        return [
            f.get(key, "") if key else "|".join(f"{k}={v}" for k, v in f.items())
            for _, f in self.messages
            if key is None or key in f
        ]

    def times(self, key: str, since: float = 0.0) -> list[float]:
        return [t for t, f in self.messages if key in f and t >= since]

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
