"""A watched drop folder: every new image file is inspected exactly once, then moved away.

Smart cameras and line PCs hand parts over as files. This source lists the folder every
``poll_s`` while it has nothing ready (a poll works the same on local disks and on NFS/SMB
shares, where inotify sees no changes made by other machines), hands out each new file once,
and after its verdict moves it to ``done_dir`` (OK, NG) or ``failed_dir`` (ERROR).

**Exactly once.** The file's receipt (its name, size and mtime) is committed to the outbox in
the very transaction that stores its verdict (``RECEIPT`` in ``Frame.extra``, see
``Outbox.append_many``); the move comes after, and the receipt is forgotten after the move.
So after a kill -9 or a power cut at any point:

- no verdict committed: no receipt, the file is still there and is inspected by the next run;
- verdict committed, file not moved yet: the next run finds the receipt, finishes the move and
  does not inspect the file again;
- moved, receipt not forgotten yet: the receipt names a file that is gone and is dropped.

Moving files alone cannot do this: moving before the commit loses the part when the process dies
in between, moving after it inspects the part twice. A receipt only counts for a file whose size
and mtime still match, so a new file under a reused name is a new part.

**Half-written files.** A file is read only once its size and mtime stayed the same for
``settle_s`` (measured on this machine's monotonic clock: a share's clock may differ from ours),
and it is checked again after the read: if it changed meanwhile it waits again. Writers that
write under another name and rename need no settle time (``settle_s: 0``): names that do not
match ``pattern``, hidden names (leading ``.``) and ``IGNORED_SUFFIXES`` are never read.

**Order.** What one listing finds ready is handed out by (mtime, name); a file that shows up
later comes after everything already handed out, whatever its mtime.

A file that cannot be decoded is an ERROR part like in ``FolderSource`` and goes to
``failed_dir``: it is never read again. If the outbox cannot write to disk (the verdict is
only in memory, ``durable: false``), the file stays where it is and is not read again by this
process; the next run inspects it again (twice rather than lost).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict

import structlog

from inspectd.capture.base import (
    RECEIPT,
    CaptureError,
    CaptureSettingError,
    CaptureSource,
    CaptureTimeout,
)
from inspectd.capture.folder import DEFAULT_PATTERN
from inspectd.contract.verdict import Verdict, VerdictRecord
from inspectd.frame import CameraMeta, Frame
from inspectd.imagefile import decode_image_file
from inspectd.names import escape_name, file_part_id

log = structlog.get_logger(__name__)

# Names writers use while a file is incomplete (then rename); never read, whatever `pattern` says.
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload", "~")

Stamp = tuple[int, int]  # (size in bytes, mtime in ns): a file that changes changes its stamp


class Ledger(Protocol):
    """Where receipts are committed with verdicts and read back at start (the Outbox)."""

    def receipts(self) -> list[tuple[str, int, Verdict]]: ...
    def forget_receipts(self, keys: Iterable[str]) -> None: ...


class WatchCounts(TypedDict):
    """Since start; health shows them as ``camera.watch``."""

    inspected: int  # files handed out as parts
    moved: int  # to done_dir or failed_dir after their verdict
    move_failed: int  # left in the watched folder (not inspected again by this process)
    resumed: int  # committed by the last run but not moved: moved now, not inspected again
    changed: int  # changed while being read: read again once settled


def ignored(name: str) -> bool:
    """Hidden files and the temporary names of writers that rename when done."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def receipt_key(name: str, stamp: Stamp) -> str:
    return f"{stamp[0]}:{stamp[1]}:{name}"


def parse_receipt(key: str) -> tuple[str, Stamp] | None:
    size, _, rest = key.partition(":")
    mtime, _, name = rest.partition(":")
    if not (size.isdigit() and mtime.isdigit() and name):
        return None
    return name, (int(size), int(mtime))


def _stamp(st: os.stat_result) -> Stamp:
    return st.st_size, st.st_mtime_ns


@dataclass(slots=True)
class _Seen:
    stamp: Stamp
    since: float  # monotonic time this stamp was first seen


class WatchedFolderSource(CaptureSource):
    """New image files of one folder (not recursive), each once; see the module docstring.

    ``ledger`` is the station's outbox; without one (tests of the source alone) what was done
    is known to this object only. ``recorded()`` (the pipeline, after the verdicts' commit)
    moves the files. Thread-safe between the capture thread (``grab``) and the publish thread
    (``recorded``).
    """

    def __init__(
        self,
        path: Path,
        pattern: str = DEFAULT_PATTERN,
        *,
        settle_s: float = 1.0,
        poll_s: float = 0.5,
        done_dir: Path | None = None,
        failed_dir: Path | None = None,
        rate_hz: float = 0.0,
        ledger: Ledger | None = None,
    ) -> None:
        if settle_s < 0 or poll_s <= 0 or rate_hz < 0:
            raise ValueError(
                f"need settle_s >= 0, poll_s > 0, rate_hz >= 0; got {settle_s}, {poll_s}, {rate_hz}"
            )
        self.path = Path(path)
        self.pattern = pattern
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.done_dir = Path(done_dir) if done_dir is not None else self.path / "done"
        self.failed_dir = Path(failed_dir) if failed_dir is not None else self.path / "failed"
        self.rate_hz = rate_hz
        self.ledger = ledger
        self.camera = CameraMeta(source="folder", serial=escape_name(str(self.path)))
        self._globs = [g.strip().lower() for g in pattern.split(",") if g.strip()]
        self._period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}  # matching files still settling
        self._ready: deque[tuple[str, Stamp]] = deque()  # settled, in order, not handed out yet
        self._inflight: dict[str, Stamp] = {}  # ready or handed out, verdict not recorded yet
        self._kept: dict[str, Stamp] = {}  # recorded but still here (move failed, not durable)
        self._opened = False
        self._next_poll = 0.0
        self._next_due: float | None = None
        self._frame_id = 0
        self._listing_error: str | None = None
        self.counts = WatchCounts(inspected=0, moved=0, move_failed=0, resumed=0, changed=0)
        self._move_error: str | None = None  # the last move's failure, until a move works

    # -- CaptureSource -----------------------------------------------------------------------

    def open(self) -> None:
        if not self.path.is_dir():
            what = "does not exist" if not self.path.exists() else "is not a folder"
            raise CaptureError(f"watched folder {what}: {self.path}")
        try:
            device = self.path.stat().st_dev
            for key, folder in (("done_dir", self.done_dir), ("failed_dir", self.failed_dir)):
                folder.mkdir(parents=True, exist_ok=True)
                if folder.stat().st_dev != device:
                    raise CaptureSettingError(
                        f"camera.watch.{key}: {folder} is on another file system than the "
                        f"watched folder {self.path}; files are moved by renaming, so choose "
                        "a folder on the same file system"
                    )
        except OSError as exc:
            raise CaptureError(f"watched folder {self.path}: {exc.strerror or exc}") from exc
        self._opened = True
        self._resume()
        log.info(
            "capture.watch.opened",
            folder=str(self.path),
            pattern=self.pattern,
            settle_s=self.settle_s,
            poll_s=self.poll_s,
            done_dir=str(self.done_dir),
            failed_dir=str(self.failed_dir),
            durable=self.ledger is not None,
        )

    def grab(self, timeout: float) -> Frame:
        if not self._opened:
            raise RuntimeError("WatchedFolderSource.grab() called before open()")
        deadline = time.monotonic() + max(timeout, 0.0)
        due = self._next_due
        if due is not None:
            now = time.monotonic()
            if due > deadline:
                time.sleep(max(deadline - now, 0.0))
                raise CaptureTimeout(f"next frame at {self.rate_hz} Hz is not due yet")
            if due > now:
                time.sleep(due - now)
        while True:
            frame = self._read(*self._take(deadline))
            if frame is None:
                continue
            if self._period:
                # a fixed grid (no drift) that restarts where a slow consumer fell behind
                slot = frame.t_mono if due is None else due
                self._next_due = max(slot + self._period, time.monotonic())
            return frame

    def recorded(self, parts: Sequence[tuple[Frame, VerdictRecord, bool]]) -> None:
        forget: list[str] = []
        for frame, record, durable in parts:
            key = frame.extra[RECEIPT]
            parsed = parse_receipt(key)
            if parsed is None:
                continue
            name, stamp = parsed
            # Only in memory (the disk refused the commit): moving the file would lose the part
            # if we die before the broker has the verdict. It stays; the next run inspects it
            # again. The name leaves _inflight only after the move: a poll in between with
            # settle_s 0 would hand the file out again.
            moved = durable and self._move(name, stamp, record.verdict, record.seq)
            with self._lock:
                if not moved:
                    self._kept[name] = stamp
                self._inflight.pop(name, None)
            if moved:
                forget.append(key)
            elif not durable:
                log.warning(
                    "capture.watch.kept_not_durable",
                    file=escape_name(name),
                    seq=record.seq,
                    detail="verdict not on disk; the file is inspected again after a restart",
                )
        if forget and self.ledger is not None:
            self.ledger.forget_receipts(forget)

    def close(self) -> None:
        self._opened = False

    def stats(self) -> dict[str, Any]:
        return {"watch": dict(self.counts)}

    def problems(self) -> list[str]:
        """``camera_listing_failed`` while the folder cannot be listed (a share gone: no new
        part is seen, which looks like an idle line otherwise); ``camera_move_failed`` while
        moves fail (from a failed move until one works): those files stay in the watched
        folder, not inspected again (the next start moves them)."""
        found = []
        if self._listing_error is not None:
            found.append(f"camera_listing_failed: {self.path}: {self._listing_error}")
        if self._move_error is not None:
            found.append(
                f"camera_move_failed: {self.counts['move_failed']} files not moved since "
                f"start, last: {self._move_error}"
            )
        return found

    # -- internals -------------------------------------------------------------------------

    def _matches(self, name: str) -> bool:
        lowered = name.lower()
        return not ignored(name) and any(fnmatch.fnmatchcase(lowered, g) for g in self._globs)

    def _resume(self) -> None:
        """Finish what the last run committed but did not move (it stopped or died between)."""
        if self.ledger is None:
            return
        forget: list[str] = []
        for key, seq, kind in self.ledger.receipts():
            parsed = parse_receipt(key)
            if parsed is None:
                forget.append(key)
                continue
            name, stamp = parsed
            try:
                now = _stamp((self.path / name).stat())
            except OSError:
                now = None
            if now != stamp:  # moved already, or a new file under that name: a new part
                forget.append(key)
                continue
            self.counts["resumed"] += 1
            log.info(
                "capture.watch.resumed",
                file=escape_name(name),
                seq=seq,
                verdict=kind.value,
                detail="inspected before the last stop; moved now, not inspected again",
            )
            if self._move(name, stamp, kind, seq):
                forget.append(key)
            else:
                self._kept[name] = stamp
        if forget:
            self.ledger.forget_receipts(forget)

    def _take(self, deadline: float) -> tuple[str, Stamp]:
        """The next settled file, polling the folder while there is none; CaptureTimeout."""
        while True:
            with self._lock:
                if self._ready:
                    return self._ready.popleft()
            now = time.monotonic()
            if now >= self._next_poll:
                self._poll(now)
                self._next_poll = now + self.poll_s
                continue
            remaining = deadline - now
            if remaining <= 0:
                raise CaptureTimeout(f"no new file in {self.path}")
            time.sleep(min(remaining, self._next_poll - now))

    def _poll(self, now: float) -> None:
        try:
            with os.scandir(self.path) as it:
                entries = [e for e in it if self._matches(e.name)]
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if self._listing_error is None:
                log.error(
                    "capture.watch.listing_failed",
                    folder=str(self.path),
                    error=reason,
                    detail="no new files are seen until the folder can be listed again",
                )
            self._listing_error = reason
            return
        if self._listing_error is not None:
            log.warning("capture.watch.listing_ok", folder=str(self.path))
            self._listing_error = None
        ready: list[tuple[int, str, Stamp]] = []
        present: set[str] = set()
        with self._lock:
            for entry in entries:
                name = entry.name
                if name in self._inflight:
                    continue
                try:
                    st = entry.stat()  # follows symlinks
                except OSError:
                    continue  # gone since the listing
                if not stat.S_ISREG(st.st_mode):
                    continue
                present.add(name)
                stamp = _stamp(st)
                if self._kept.get(name) == stamp:
                    continue  # recorded already, could not be moved
                self._kept.pop(name, None)  # a new file under that name
                seen = self._seen.get(name)
                if seen is None or seen.stamp != stamp:
                    self._seen[name] = seen = _Seen(stamp, now)
                if now - seen.since >= self.settle_s:
                    ready.append((st.st_mtime_ns, name, stamp))
            for name in [n for n in self._seen if n not in present]:
                del self._seen[name]
            for name in [n for n in self._kept if n not in present]:
                del self._kept[name]  # someone took it away
            ready.sort()
            for _, name, stamp in ready:
                del self._seen[name]
                self._inflight[name] = stamp
                self._ready.append((name, stamp))

    def _read(self, name: str, stamp: Stamp) -> Frame | None:
        """The file as a frame; None if it changed since it settled (it waits again)."""
        file = self.path / name
        t_capture, t_mono = time.time(), time.monotonic()
        image, error = decode_image_file(file)
        try:
            after: Stamp | None = _stamp(file.stat())
        except OSError:
            after = None  # vanished: decode said so, an ERROR part
        if after is not None and after != stamp:
            # still being written after all (a writer that paused longer than settle_s)
            self.counts["changed"] += 1
            log.info(
                "capture.watch.changed_while_read",
                file=escape_name(name),
                detail="read again once settled",
            )
            with self._lock:
                self._inflight.pop(name, None)
                self._seen[name] = _Seen(after, time.monotonic())
            return None
        if error is not None:
            log.warning("capture.watch.bad_file", file=escape_name(name), error=error)
        self._frame_id += 1
        self.counts["inspected"] += 1
        return Frame(
            image=image,
            frame_id=self._frame_id,
            part_id=file_part_id(name),  # a name that is not UTF-8 is escaped, reversibly
            t_capture=t_capture,
            t_mono=t_mono,
            camera=self.camera,
            error=error,
            # the receipt keeps the name's exact bytes (surrogate escapes); the rest is for people
            extra={
                "path": escape_name(str(file)),
                "file": escape_name(name),
                RECEIPT: receipt_key(name, stamp),
            },
        )

    def _move(self, name: str, stamp: Stamp, verdict: Verdict, seq: int) -> bool:
        """Into done_dir or failed_dir; True once the file is no longer in the watched folder
        as the part that was inspected (moved, gone, or replaced by a new file)."""
        src = self.path / name
        folder = self.failed_dir if verdict is Verdict.ERROR else self.done_dir
        dst = folder / name
        try:
            if _stamp(src.stat()) != stamp:
                return True  # replaced by a new file under the same name: that is a new part
            if dst.exists():  # a name the writer reused: keep both
                dst = folder / f"{Path(name).stem}~{seq}{Path(name).suffix}"
            os.replace(src, dst)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self.counts["move_failed"] += 1
            self._move_error = f"{escape_name(name)} to {folder}: {exc.strerror or exc}"
            log.error(
                "capture.watch.move_failed",
                file=escape_name(name),
                to=str(folder),
                seq=seq,
                error=exc.strerror or str(exc),
                detail="left in place and not inspected again",
            )
            return False
        self.counts["moved"] += 1
        self._move_error = None
        return True
