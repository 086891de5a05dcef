"""The NG archive: frames of rejected parts kept on disk, size-bounded, for review and replay.

Layout (one set of files per part, named so that they sort in time order and by seq)::

    <dir>/<YYYY-MM-DD>/<seq:010d>-<part_id>-<VERDICT>.json   the verdict and what was kept
                                                    .png    the frame, lossless, as grabbed
                                                    .map.npy     the anomaly map, float32,
                                                                 at model-input size
                                                    .frame.npy   the frame, when PNG cannot hold it

The date is the capture date (UTC). The ``.json`` file is written last (atomically), so an entry
with a JSON file is complete; an ERROR without a frame (camera timeout, expired trigger,
undecodable file) has only its JSON. ``inspectd replay`` reads entries back with `scan` and
`read_entry`.

The bound: after each write, while the files of the archive hold more than ``max_bytes``, the
oldest entries are deleted (counted and logged). A restart scans the folder once, so it knows
what is there. Files are written by the archive's own thread, so the verdicts never wait for
the disk: when that thread falls behind, parts are skipped (counted and logged). Writing never
raises: a full disk or a folder that is not there is counted and logged, and the verdict goes
out as it would without the archive.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import structlog

from inspectd.contract.verdict import Verdict, iso_utc
from inspectd.inspection import Inspection
from inspectd.outputs.workers import BackgroundWorker

log = structlog.get_logger(__name__)

ARCHIVE_SCHEMA = "inspectd.archive/1"
PNG_COMPRESSION = 1  # fast: the archive writes on the sink thread, at line rate
SUFFIXES = (".json", ".png", ".map.npy", ".frame.npy")  # every file an entry can have
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_QUIET_S = 60.0  # while writes keep failing, at most one log line per this many seconds


@dataclass(slots=True)
class ArchiveEntry:
    """The files of one archived part. `key` orders entries oldest first."""

    folder: Path
    stem: str
    files: list[Path] = field(default_factory=list)
    size: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.folder.name, self.stem)

    @property
    def json_path(self) -> Path:
        return self.folder / f"{self.stem}.json"


def _stem_of(name: str) -> str | None:
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def scan(directory: Path, *, remove_partial: bool = False) -> list[ArchiveEntry]:
    """The entries under `directory`, oldest first. Files that are not the archive's own are
    left alone and not counted. With `remove_partial`, half-written JSON files (``*.tmp``, left
    by a crash) are deleted. Raises OSError if `directory` cannot be listed."""
    entries: list[ArchiveEntry] = []
    with os.scandir(directory) as days:
        folders = sorted(d.name for d in days if _DATE.match(d.name) and d.is_dir())
    for day in folders:
        found: dict[str, ArchiveEntry] = {}
        with os.scandir(directory / day) as files:
            for f in files:
                if not f.is_file(follow_symlinks=False):
                    continue
                if f.name.endswith(".json.tmp") and remove_partial:
                    _unlink(Path(f.path))
                    continue
                stem = _stem_of(f.name)
                if stem is None:
                    continue
                entry = found.setdefault(stem, ArchiveEntry(directory / day, stem))
                entry.files.append(Path(f.path))
                entry.size += f.stat(follow_symlinks=False).st_size
        entries.extend(found[s] for s in sorted(found))
    return entries


def read_entry(entry: ArchiveEntry) -> dict[str, Any]:
    """The entry's JSON document; raises OSError or ValueError when it is missing or damaged."""
    try:
        doc = json.loads(entry.json_path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not JSON, not UTF-8
        raise ValueError(f"{entry.json_path}: damaged ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != ARCHIVE_SCHEMA:
        raise ValueError(f"{entry.json_path}: not an {ARCHIVE_SCHEMA} document")
    if not isinstance(doc.get("verdict"), dict):
        raise ValueError(f"{entry.json_path}: no verdict in it")
    return doc


def find_entry(
    root: Path, seq: int | None = None, part_id: str | None = None
) -> tuple[ArchiveEntry, dict[str, Any]] | None:
    """The newest entry whose verdict has this seq and/or part id (give at least one), with its
    document; None when there is none. Raises OSError when the archive cannot be read."""
    prefix = f"{seq:010d}-" if seq is not None else ""
    for entry in reversed(scan(root)):
        if not entry.stem.startswith(prefix) or not entry.json_path.exists():
            continue
        try:
            doc = read_entry(entry)
        except (OSError, ValueError):
            continue
        v = doc["verdict"]
        if (seq is None or v.get("seq") == seq) and (
            part_id is None or v.get("part_id") == part_id
        ):
            return entry, doc
    return None


def _unlink(path: Path) -> bool:
    try:
        path.unlink(missing_ok=True)
        return True
    except OSError:
        return False


def _encode_frame(image: np.ndarray) -> tuple[str, bytes]:
    """(suffix, bytes): PNG where it can hold the image exactly, .npy otherwise."""
    if image.dtype in (np.uint8, np.uint16) and (image.ndim == 2 or image.shape[2] in (1, 3, 4)):
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        if ok:
            return ".png", buf.tobytes()
    return ".frame.npy", _npy(image)


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


class ArchiveSink:
    """A VerdictSink that keeps NG and ERROR parts (and every `ok_every`-th OK part) on disk
    under `directory`, holding its files to `max_bytes` by deleting the oldest entries.

    Files are written by the archive's own thread: encoding a large frame as PNG takes a
    camera's frame time or more (docs/performance.md), and the verdicts behind it must not
    wait. A part that finds that thread `queue_depth` parts behind
    is not archived; it is counted (``skipped``) and logged.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        verdicts: Collection[str] = ("NG", "ERROR"),
        ok_every: int = 0,
        queue_depth: int = 8,
    ) -> None:
        if max_bytes <= 0 or ok_every < 0:
            raise ValueError(
                f"max_bytes must be > 0 and ok_every >= 0, got {max_bytes}, {ok_every}"
            )
        self.directory, self.max_bytes, self.ok_every = Path(directory), max_bytes, ok_every
        self.verdicts = frozenset(Verdict(v) for v in verdicts)
        self._entries: deque[ArchiveEntry] = deque()
        self._bytes = 0
        self._ok_seen = 0
        self._lock = threading.Lock()  # stats() is read from the health thread
        self.archived = self.dropped = self.errors = 0
        self.last_error: str | None = None
        self._failing = False
        self._failed_in_streak = 0
        self._last_log = float("-inf")
        self._scanned = False
        self._open()
        self._writer = BackgroundWorker("archive", self._store, queue_depth)

    # -- start -----------------------------------------------------------------------------

    def _open(self) -> None:
        """Scan what an earlier run left, so the bound counts it; a folder that cannot be made
        or read is counted as an error, and each later write tries again."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            entries = scan(self.directory, remove_partial=True)
        except OSError as exc:
            self._failed(exc, "archive.unusable")
            return
        with self._lock:
            self._entries.extend(entries)
            self._bytes += sum(e.size for e in entries)
        self._scanned = True
        log.info(
            "archive.opened",
            dir=str(self.directory),
            entries=len(entries),
            bytes=self._bytes,
            max_bytes=self.max_bytes,
        )
        self._enforce_bound()

    # -- the sink ----------------------------------------------------------------------------

    def handle(self, inspection: Inspection) -> None:
        """Hand the part to the writer thread; never waits for the disk."""
        if not self._wanted(inspection.record.verdict):
            return
        self._writer.offer(inspection, seq=inspection.record.seq)

    def flush(self) -> None:
        """Wait until every part handed in so far is written (or has failed)."""
        self._writer.flush()

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        self._writer.close()
        log.info("archive.closed", **self.stats())

    def _store(self, inspection: Inspection) -> None:
        if not self._scanned:
            self._open()  # the folder was not usable at start; it may be now
            if not self._scanned:
                return
        try:
            entry = self._write(inspection)
        except (
            Exception
        ) as exc:  # a full disk, a folder that went away: never the verdict's problem
            self._failed(
                exc,
                "archive.write_failed",
                seq=inspection.record.seq,
                part_id=inspection.record.part_id,
            )
            return
        with self._lock:
            self._entries.append(entry)
            self._bytes += entry.size
            self.archived += 1
        if self._failing:
            log.info("archive.recovered", failed_writes=self._failed_in_streak)
            self._failing, self._failed_in_streak = False, 0
        self._enforce_bound()

    def threads(self) -> dict[str, threading.Thread | None]:
        return self._writer.threads()

    def stats(self) -> dict[str, Any]:
        """Counts since start (archived, dropped, errors, skipped) and what the folder holds."""
        with self._lock:
            return {
                "dir": str(self.directory),
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "archived": self.archived,
                "dropped": self.dropped,
                "errors": self.errors,
                "skipped": self._writer.skipped,
                "failing": self._failing,
                "last_error": self.last_error,
            }

    def problems(self) -> list[str]:
        """``archive_failing`` from a failed write until one works again."""
        with self._lock:
            failing, errors, last = self._failing, self.errors, self.last_error
        return [f"archive_failing: {errors} errors since start, last: {last}"] if failing else []

    # -- inside ------------------------------------------------------------------------------

    def _wanted(self, verdict: Verdict) -> bool:
        if verdict is not Verdict.OK:
            return verdict in self.verdicts
        if self.ok_every == 0:
            return False
        self._ok_seen += 1
        return self._ok_seen % self.ok_every == 0

    def _stem(self, folder: Path, seq: int, part_id: str, verdict: Verdict) -> str:
        part = _UNSAFE.sub("_", part_id)[:64] or "_"
        stem, n = f"{seq:010d}-{part}-{verdict.value}", 1
        while (folder / f"{stem}.json").exists():  # seq 0 (not recorded) can repeat
            n += 1
            stem = f"{seq:010d}-{part}_{n}-{verdict.value}"
        return stem

    def _write(self, inspection: Inspection) -> ArchiveEntry:
        rec, frame = inspection.record, inspection.frame
        day = datetime.fromtimestamp(rec.t_capture, UTC).strftime("%Y-%m-%d")
        folder = self.directory / day
        folder.mkdir(parents=True, exist_ok=True)
        entry = ArchiveEntry(folder, self._stem(folder, rec.seq, rec.part_id, rec.verdict))
        doc: dict[str, Any] = {
            "schema": ARCHIVE_SCHEMA,
            "verdict": rec.to_payload(),
            "frame": None,
            "frame_shape": None,
            "frame_dtype": None,
            "map": None,
            "geometry": None,
            "source": {
                "camera": frame.camera.source,
                "serial": frame.camera.serial,
                "file": frame.extra.get("file"),
            },
            "archived": iso_utc(time.time()),
        }
        try:
            if frame.image is not None:
                suffix, data = _encode_frame(frame.image)
                doc["frame"] = self._put(entry, suffix, data)
                doc["frame_shape"] = list(frame.image.shape)
                doc["frame_dtype"] = str(frame.image.dtype)
            if inspection.anomaly_map is not None:
                amap = np.asarray(inspection.anomaly_map, dtype=np.float32)
                doc["map"] = self._put(entry, ".map.npy", _npy(amap))
            if inspection.geometry is not None:
                g = inspection.geometry
                doc["geometry"] = {"x0": g.x0, "y0": g.y0, "sx": g.sx, "sy": g.sy}
            data = json.dumps(doc, indent=1).encode("utf-8")
            tmp = entry.folder / f"{entry.stem}.json.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, entry.json_path)  # last: an entry with its JSON is whole
            entry.files.append(entry.json_path)
            entry.size += len(data)
        except BaseException:
            for f in [*entry.files, entry.folder / f"{entry.stem}.json.tmp"]:
                _unlink(f)
            raise
        return entry

    def _put(self, entry: ArchiveEntry, suffix: str, data: bytes) -> str:
        path = entry.folder / f"{entry.stem}{suffix}"
        entry.files.append(path)  # before writing: a half-written file is cleaned up too
        path.write_bytes(data)
        entry.size += len(data)
        return path.name

    def _enforce_bound(self) -> None:
        """Delete the oldest entries until the archive fits in max_bytes (a single entry larger
        than the bound goes too: the bound is a promise about the disk)."""
        dropped = freed = 0
        while self._bytes > self.max_bytes and self._entries:
            with self._lock:
                entry = self._entries.popleft()
                self._bytes -= entry.size
                self.dropped += 1
            dropped, freed = dropped + 1, freed + entry.size
            if not all([_unlink(f) for f in entry.files]):
                self._failed(
                    OSError(f"could not delete every file of {entry.json_path}"),
                    "archive.delete_failed",
                )
            try:
                entry.folder.rmdir()  # only succeeds once the day is empty
            except OSError:
                pass
        if dropped:
            log.info(
                "archive.dropped_oldest",
                entries=dropped,
                bytes=freed,
                kept_bytes=self._bytes,
                max_bytes=self.max_bytes,
            )

    def _failed(self, exc: BaseException, event: str, **fields: Any) -> None:
        """Count and log a failure; while failures go on, log at most every _QUIET_S seconds."""
        reason = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.errors += 1
            self.last_error = reason
        self._failed_in_streak += 1
        now = time.monotonic()
        if not self._failing or now - self._last_log >= _QUIET_S:
            log.error(
                event,
                dir=str(self.directory),
                error=reason,
                errors=self.errors,
                failed_in_a_row=self._failed_in_streak,
                **fields,
            )
            self._last_log = now
        self._failing = True
