"""Operator reviews of inspected parts, stored by the station beside its NG archive.

The UI (``inspectd ui``) asks over MQTT (``…/cmd/review/set``); the station answers, because it
is the one that holds the part's frame. A review copies the archived entry (hard links where
the file system allows: no second copy of the frame) into an archive of its own::

    <archive>/reviews/false_reject/<review date>/<stem>.json|.png|.map.npy
        rejected, reviewed good
    <archive>/reviews/missed_defect/<review date>/<stem>.json|...
        accepted, reviewed defective
    <archive>/reviews/true_defect/<review date>/<stem>.json|...
        rejected, confirmed defective

A part holds one review at a time: a new label replaces the old one, and ``unreview`` (the
page's Undo) removes it, so a mistaken click never stays among the good parts calibrate reads.

Each is laid out like the archive itself, with a ``review`` key added to the JSON, so
``inspectd calibrate --images <archive>/reviews/false_reject`` takes reviewed good parts as
calibration images and ``inspectd replay --archive <archive>/reviews/false_reject`` tells what a
new bundle decides on them. ``reviews/`` is not a date folder, so the archive's size bound
neither counts nor deletes it: a reviewed frame outlives its archive entry.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from inspectd.contract.verdict import iso_utc
from inspectd.contract.vocabulary import Command
from inspectd.durable import fsync_dir, link_or_copy
from inspectd.mqtt.commands import CommandError
from inspectd.outputs.archive import ARCHIVE_SCHEMA, SUFFIXES, ArchiveEntry, find_entry

# label -> the verdicts a part must have had for it
LABELS: dict[str, tuple[str, ...]] = {
    "false_reject": ("NG", "ERROR"),
    "true_defect": ("NG", "ERROR"),
    "missed_defect": ("OK",),
}
REVIEWS_DIR = "reviews"
_ARGS = {"seq", "part_id", "label", "by", "note"}
_BY = re.compile(r"^[\w .@-]{1,64}$")


def today_utc(now: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%d")


class ReviewDesk:
    """The ``review`` and ``reviews`` command handlers of a station with archive folder
    ``archive_dir`` (None: the archive is off, reviews are refused)."""

    def __init__(self, archive_dir: Path | None) -> None:
        self.archive_dir = archive_dir
        self._lock = threading.Lock()  # one review at a time (the command desk runs one anyway)

    # -- handlers ------------------------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """For the station's command desk: …/cmd/review/set, …/cmd/unreview/set and
        …/cmd/reviews/set."""
        return {
            Command.REVIEW: self.review,
            Command.UNREVIEW: self.unreview,
            Command.REVIEWS: self.counts,
        }

    def review(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"seq", "part_id", "label", "by"?, "note"?}`` -> where it was stored and today's
        counts."""
        root = self._root()
        seq, part_id, label, by, note = _parse(args)
        with self._lock:
            entry, doc = _find(root, seq, part_id)
            if doc is None and label == "false_reject":
                raise CommandError(
                    f"seq {seq} ({part_id}) is not in the archive (not archived, "
                    "or dropped by archive.max_bytes): nothing to review"
                )
            verdict = (doc or {}).get("verdict", {}).get("verdict", "OK")
            if verdict not in LABELS[label]:
                raise CommandError(
                    f"seq {seq} was {verdict}: {label} is for {' or '.join(LABELS[label])} parts"
                )
            review = {"label": label, "by": by, "note": note, "ts": iso_utc(time.time())}
            stored, frame = self._store(root, label, seq, part_id, entry, doc, review)
            today = self._today(root)
        return {
            "seq": seq,
            "part_id": part_id,
            "label": label,
            "stored": str(stored),
            "frame": frame,
            "today": today,
        }

    def unreview(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"seq", "part_id", "by"?}`` -> the label removed and today's counts (Undo)."""
        root = self._root()
        unknown = set(args) - {"seq", "part_id", "by"}
        if unknown:
            raise CommandError(
                f"unknown unreview fields {sorted(unknown)}; allowed: by, part_id, seq"
            )
        seq, part_id, _, by, _ = _parse({**args, "label": "false_reject"})
        with self._lock:
            removed = _remove_reviews(root, seq, part_id)
            if not removed:
                raise CommandError(f"seq {seq} ({part_id}) has no review to undo")
            today = self._today(root)
        return {"seq": seq, "part_id": part_id, "removed": removed[0], "by": by, "today": today}

    def counts(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{}`` -> reviews stored today (UTC), by label."""
        if args:
            raise CommandError(f"reviews takes no arguments, got {sorted(args)}")
        return {"today": self._today(self._root()), "date": today_utc()}

    # -- storing -------------------------------------------------------------------------------

    def _root(self) -> Path:
        if self.archive_dir is None:
            raise CommandError(
                "this station keeps no archive (archive.enabled: false): reviews "
                "are stored beside the archived frames"
            )
        return self.archive_dir

    def _store(
        self,
        root: Path,
        label: str,
        seq: int,
        part_id: str,
        entry: ArchiveEntry | None,
        doc: dict[str, Any] | None,
        review: dict[str, Any],
    ) -> tuple[Path, bool]:
        """The review as an archive entry of its own; (its JSON path, whether a frame came)."""
        stem = entry.stem if entry is not None else _stem(seq, part_id)
        # one review per part: another label's entry goes (a part is not good and defective)
        _remove_reviews(root, seq, part_id, keep=label)
        folder = root / REVIEWS_DIR / label / today_utc()
        earlier = sorted((root / REVIEWS_DIR / label).glob(f"*/{stem}.json"))
        if earlier:  # reviewed before: the newest word replaces the review, not the day
            folder = earlier[0].parent
        folder.mkdir(parents=True, exist_ok=True)
        if doc is None:  # an accepted part that was not archived: the review alone
            doc = {
                "schema": ARCHIVE_SCHEMA,
                "frame": None,
                "map": None,
                "verdict": {"seq": seq, "part_id": part_id, "verdict": "OK"},
            }
        else:
            assert entry is not None
            for f in entry.files:
                if f.name.endswith(".json"):
                    continue
                _link_or_copy(f, folder / f.name)
        data = json.dumps({**doc, "review": review}, indent=1).encode("utf-8")
        target = folder / f"{stem}.json"
        tmp = folder / f"{stem}.json.tmp"
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())  # an operator's word must survive a power cut
        os.replace(tmp, target)
        fsync_dir(folder)
        return target, bool(doc.get("frame"))

    def _today(self, root: Path) -> dict[str, int]:
        day = today_utc()
        return {
            label: len(list((root / REVIEWS_DIR / label / day).glob("*.json"))) for label in LABELS
        }


def is_reviewed_frame(path: Path) -> bool:
    """Whether an image is a reviewed part's frame (its JSON beside it has a ``review``)."""
    suffix = next((x for x in SUFFIXES if path.name.endswith(x)), path.suffix)
    doc_path = path.with_name(path.name.removesuffix(suffix) + ".json")
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("review"), dict)


def _parse(args: dict[str, Any]) -> tuple[int, str, str, str | None, str | None]:
    unknown = set(args) - _ARGS
    if unknown:
        raise CommandError(f"unknown review fields {sorted(unknown)}; allowed: {sorted(_ARGS)}")
    seq, part_id, label = args.get("seq"), args.get("part_id"), args.get("label")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise CommandError(f"seq: {seq!r} is not a verdict's seq (an integer >= 1)")
    if not isinstance(part_id, str) or not part_id or len(part_id) > 256:
        raise CommandError("part_id: expected the part's id (a non-empty string)")
    if label not in LABELS:
        raise CommandError(f"label: {label!r} is not one of {', '.join(LABELS)}")
    by, note = args.get("by"), args.get("note")
    if by is not None and (not isinstance(by, str) or not _BY.match(by)):
        raise CommandError("by: letters, digits, spaces, '.', '@', '_' and '-' (at most 64)")
    if note is not None and (not isinstance(note, str) or len(note) > 500):
        raise CommandError("note: a string of at most 500 characters")
    return seq, part_id, label, by, note


def _stem(seq: int, part_id: str) -> str:
    return f"{seq:010d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', part_id)[:64] or '_'}-OK"


def _find(root: Path, seq: int, part_id: str) -> tuple[ArchiveEntry | None, dict[str, Any] | None]:
    """The archive entry of (seq, part_id), newest day first (reviews are of recent parts)."""
    try:
        found = find_entry(root, seq, part_id)
    except OSError as exc:
        raise CommandError(f"cannot read the archive {root}: {exc}") from exc
    return found if found is not None else (None, None)


def review_of(root: Path, stem: str) -> dict[str, Any] | None:
    """The review of the archive entry ``stem`` (``label`` added), or None."""
    for label in LABELS:
        for doc_path in sorted((root / REVIEWS_DIR / label).glob(f"*/{glob_escape(stem)}.json")):
            try:
                review = json.loads(doc_path.read_text()).get("review")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(review, dict):
                return {**review, "label": label}
    return None


def _remove_reviews(root: Path, seq: int, part_id: str, keep: str | None = None) -> list[str]:
    """Delete the part's review entries (but those under label ``keep``); the labels removed."""
    removed = []
    for label in LABELS:
        if label == keep:
            continue
        for doc in sorted((root / REVIEWS_DIR / label).glob(f"*/{seq:010d}-*.json")):
            try:
                v = json.loads(doc.read_text())["verdict"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if v.get("seq") != seq or v.get("part_id") != part_id:
                continue
            doc.unlink()  # the JSON first: without it the frame is no review
            stem = doc.name.removesuffix(".json")
            for f in doc.parent.glob(f"{glob_escape(stem)}.*"):
                f.unlink()
            fsync_dir(doc.parent)
            removed.append(label)
    return removed


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        link_or_copy(src, dst)
    except FileNotFoundError as exc:
        raise CommandError(f"{src.name}: deleted by the archive's bound meanwhile") from exc


def reviewed_frames(root: Path, label: str, product: str) -> list[Path]:
    """The frames of the parts of ``product`` reviewed ``label`` under archive ``root``, oldest
    review day first (what a refit adds: false rejects to the good parts, true and missed
    defects to the report's defect set). A review without a frame (an OK part that was not
    archived) has nothing to add."""
    out = []
    for doc_path in sorted((root / REVIEWS_DIR / label).glob("*/*.json")):
        try:
            doc = json.loads(doc_path.read_text())
        except (OSError, ValueError):
            continue
        verdict = doc.get("verdict") if isinstance(doc, dict) else None
        frame = doc.get("frame") if isinstance(doc, dict) else None
        if not isinstance(verdict, dict) or verdict.get("product") != product or not frame:
            continue
        path = doc_path.parent / str(frame)
        if path.suffix == ".png" and path.is_file():  # a .frame.npy is not an image file
            out.append(path)
    return out
