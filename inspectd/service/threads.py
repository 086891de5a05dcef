"""The station's long-lived threads, watched: one that ends while the station runs is dead.

Before issue 31 the outbox feeder could end on an exception nobody expected: no verdict went
out again, also after every restart, while health said ok, /healthz 200 and the watchdog kept
pinging. A dead thread now counts like a stalled one (``StationHealth.stalled``, the one check
behind the watchdog and /healthz): health has ``thread_dead``, /healthz answers 503 and the
systemd watchdog pings stop, so systemd restarts the station.

Components with threads of their own say which (``Threaded``); the station registers them as
they start. Threads end on purpose once the station stops: ``stopping()`` says so. The pipeline's
threads are not here: they end with every ``run()``, and ``Pipeline.stalled`` tells a publish
thread that died from one that finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Threaded(Protocol):
    def threads(self) -> Mapping[str, threading.Thread | None]:
        """Name -> thread of each long-lived thread it started (None: not started)."""


class ThreadWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._dead_since: dict[str, float] = {}  # monotonic, when first seen dead
        self._stopping = False

    def watch(self, component: Threaded | None) -> None:
        """Watch the threads ``component`` has started (call after starting it)."""
        if component is None:
            return
        with self._lock:
            for name, thread in component.threads().items():
                if thread is not None:
                    self._threads[name] = thread

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._threads)

    def stopping(self) -> None:
        """From now on threads end because the station stops: none is dead."""
        self._stopping = True

    def dead(self) -> dict[str, float]:
        """Watched threads that ended: name -> seconds since that was first seen."""
        if self._stopping:
            return {}
        now = time.monotonic()
        with self._lock:
            for name, thread in self._threads.items():
                if not thread.is_alive():
                    self._dead_since.setdefault(name, now)
            return {name: round(now - since, 1) for name, since in self._dead_since.items()}

    def stats(self) -> dict[str, Any]:
        return {"watched": self.names(), "dead": self.dead()}

    def problems(self) -> list[str]:
        return [
            f"thread_dead: the {name} thread ended {seconds:.0f} s ago; watchdog pings withheld"
            for name, seconds in self.dead().items()
        ]
