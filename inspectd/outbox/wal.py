"""The outbox's write-ahead log, kept small: SQLite's own checkpoint let it grow to 4 MiB and fill
a small state folder for good; a thread of its own copies it back past ``WAL_LIMIT_BYTES``."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import structlog

log = structlog.get_logger("inspectd.outbox")

WAL_LIMIT_BYTES = 512 * 1024  # checkpointed past this (SQLite's default let it reach 4 MiB)


def wal_bytes(path: Path) -> int:
    try:
        return path.with_name(path.name + "-wal").stat().st_size
    except OSError:
        return 0


class Checkpointer:
    """Copies the WAL into the database on its own thread and connection when asked. PASSIVE
    waits for no one and blocks no writer; what it could not copy (frames written meanwhile)
    the next request copies. ``lock`` is held while it runs: a TRUNCATE checkpoint on another
    connection takes it first rather than fail on SQLite's checkpoint lock."""

    def __init__(self, path: Path, sync: str) -> None:
        self._path = path
        self._conn = sqlite3.connect(
            path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.execute(f"PRAGMA synchronous={sync.upper()}")  # the checkpoint's fsyncs
        except sqlite3.Error:
            self._conn.close()
            raise
        self.lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="outbox-checkpoint", daemon=True)
        self.thread.start()

    def request(self) -> None:
        self._wake.set()

    def bound(self, conn: sqlite3.Connection) -> None:
        """After a commit on ``conn``: past the limit this thread copies the WAL back; at twice
        the limit its passive checkpoints could not finish (writes without a pause), and the
        committing thread checkpoints itself."""
        size = wal_bytes(self._path)
        if size > 2 * WAL_LIMIT_BYTES:
            self.truncate(conn)
        elif size > WAL_LIMIT_BYTES:
            self.request()

    def truncate(self, conn: sqlite3.Connection) -> bool:
        """Copy the WAL into the database on ``conn`` and truncate it to 0 bytes; False if it
        could not (busy, or the disk refused)."""
        try:
            with self.lock:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.debug("outbox.checkpoint_failed", path=str(self._path), error=str(exc))
            return False
        return not busy

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                with self.lock:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:  # e.g. a full disk: the committing thread's fallback
                log.debug("outbox.checkpoint_failed", error=str(exc))

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self.thread.join()
        self._conn.close()
