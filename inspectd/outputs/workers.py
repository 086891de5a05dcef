"""One thread for slow, best-effort work handed over by the publish thread (archive PNGs,
overlay pictures): the verdicts behind a part must not wait for its pictures."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


_QUIET_S = 10.0  # at most one "skipped" warning per this many seconds


class BackgroundWorker(Generic[T]):
    """Runs ``work(item)`` on its own thread for each item ``offer()`` accepts, in order. At
    most ``depth`` items wait: a full queue refuses the item instead of making the caller wait,
    counts it (``skipped``) and logs ``<name>.skipped_busy`` (once per 10 s at most).
    ``work`` raising is logged as ``<name>.failed``; the thread goes on."""

    def __init__(self, name: str, work: Callable[[T], None], depth: int = 8) -> None:
        self.name = name
        self.skipped = 0  # read from other threads: an int, updated under the GIL
        self._work = work
        self._last_log = float("-inf")
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=max(1, depth))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def offer(self, item: T, **about: object) -> bool:
        """Queue `item`; False (counted and logged with `about`) when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.skipped += 1
            if time.monotonic() - self._last_log >= _QUIET_S:
                self._last_log = time.monotonic()
                log.warning(
                    f"{self.name}.skipped_busy",
                    skipped=self.skipped,
                    queue_depth=self._queue.maxsize,
                    **about,
                )
            return False
        return True

    def threads(self) -> dict[str, threading.Thread | None]:
        """Its thread, for the station's thread watch."""
        return {self.name: self._thread}

    def flush(self) -> None:
        """Wait until every item accepted so far is done (or has failed)."""
        self._queue.join()

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._work(item)
            except Exception:  # never let the thread die
                log.exception(f"{self.name}.failed")
            finally:
                self._queue.task_done()
