"""`inspectd run --config CONFIG` as a child process, the way systemd starts it, for tests.

Its output goes to files next to the config (no pipe can fill up and stall it); the JSON log
lines are read back from them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from support.paths import LEAN_RUN, REPO


class Daemon:
    def __init__(
        self, config: Path, name: str = "daemon", env: Mapping[str, str] | None = None
    ) -> None:
        """``env``: variables set for the daemon on top of this process's (NOTIFY_SOCKET, …)."""
        self.stdout = config.parent / f"{name}.stdout"
        self.stderr = config.parent / f"{name}.stderr"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LEAN_RUN, "run", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=REPO,
                env=None if env is None else {**os.environ, **env},
            )

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def lines(self) -> list[str]:
        """Everything it printed so far (stdout, then stderr, where the log goes)."""
        return [
            line
            for path in (self.stdout, self.stderr)
            for line in path.read_text(errors="replace").splitlines()
        ]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines, in order; those whose event is ``name`` if given."""
        found = []
        for line in self.lines:
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                found.append(entry)
        return found

    def wait_event(self, name: str, n: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The first ``n`` (or more) log lines with event ``name``, once they are there."""
        deadline = time.monotonic() + timeout
        while len(found := self.events(name)) < n:
            if not self.running:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {n}x "
                    f"{name!r}; log tail:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {n}x {name!r} within {timeout} s; log:\n{self.tail()}")
            time.sleep(0.05)
        return found

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """The exit code; kills it and fails if it does not exit within ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the daemon did not exit in {timeout} s\n{self.tail()}") from None

    def terminate(self, timeout: float = 25.0) -> int:
        """SIGTERM and wait: the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.proc.kill()
            self.proc.wait()
