"""One thread for slow, best-effort work handed over by the publish thread (archive PNGs,
overlay pictures): the verdicts behind a part must not wait for its pictures."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


class BackgroundWorker(Generic[T]):
    """Runs ``work(item)`` on its own thread for each item ``offer()`` accepts, in order. At
    most ``depth`` items wait: a full queue refuses the item (``offer`` returns False) instead
    of making the caller wait. ``work`` raising is logged as ``<name>.failed``; the thread
    goes on."""

    def __init__(self, name: str, work: Callable[[T], None], depth: int = 8) -> None:
        self.name = name
        self._work = work
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=max(1, depth))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queue.maxsize

    def offer(self, item: T) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

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
