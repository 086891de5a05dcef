"""The per-station ``seq`` that consumers de-duplicate on (design.md, MQTT contract).

``seq`` never goes backwards and never repeats, across restarts and crashes. Writing the file on
every part would cost an fsync per part, so numbers are reserved in blocks: the file holds a
high-water mark H meaning "numbers up to H may have been handed out". Before handing out a number
above H, a new H (``block`` further on) is written atomically (tmp file, fsync, os.replace, fsync
of the folder). After a crash the next process starts at H + 1: numbers jump forward, never back.
A clean ``close()`` writes the last number handed out, so a clean restart leaves no gap.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType


class SequenceFileError(RuntimeError):
    """The sequence file cannot be read or written. Never silently restart at 1."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open folders (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SequenceCounter:
    """Thread-safe, persistent, strictly increasing counter; the first number is 1."""

    def __init__(self, path: Path, block: int = 1000) -> None:
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.path = Path(path)
        self.block = block
        self._lock = threading.Lock()
        self._last = self._read_high_water()  # last number that may have been handed out
        self._reserved = self._last  # numbers up to here are covered by the file
        self._closed = False

    def _read_high_water(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise SequenceFileError(f"cannot read sequence file {self.path}: {exc}") from exc
        value = text.strip()
        if not value.isdigit():  # also refuses an empty file, signs and fractions
            shown = value[:40] + ("…" if len(value) > 40 else "")
            raise SequenceFileError(
                f"corrupt sequence file {self.path}: expected a non-negative integer, "
                f"found {shown!r}. Refusing to restart the sequence; restore the file or write "
                f"a number above the last seq consumers have seen."
            )
        return int(value)

    def _write_high_water(self, value: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{value}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise SequenceFileError(f"cannot write sequence file {self.path}: {exc}") from exc

    def next(self) -> int:
        with self._lock:
            if self._closed:
                raise SequenceFileError(f"sequence counter on {self.path} is closed")
            value = self._last + 1
            if value > self._reserved:
                reserved = self._last + self.block
                self._write_high_water(reserved)  # on failure nothing is handed out
                self._reserved = reserved
            self._last = value
            return value

    @property
    def last(self) -> int:
        """The last number handed out (or reserved by an earlier process that crashed)."""
        with self._lock:
            return self._last

    def close(self) -> None:
        """Shrink the reservation to the last number handed out, so a clean restart has no gap."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._reserved != self._last:
                # Only shrink our own reservation: if another instance has moved the mark on
                # (it should not: one process per station), writing ours would go backwards.
                if self._read_high_water() == self._reserved:
                    self._write_high_water(self._last)
                    self._reserved = self._last

    def __enter__(self) -> SequenceCounter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
