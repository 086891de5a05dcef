"""`inspectd replay`: archived frames through the current bundle, and what changed.

The frames go through the daemon's own `Pipeline` (preprocess, engine, decide: one
implementation of each), fed by a capture source that reads the archive, so a replayed verdict
is exactly what the station would decide today with that bundle. Each part's new verdict and
score are compared with the archived ones.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspectd.bundle import Bundle, BundleError, load_bundle
from inspectd.capture.base import CaptureSource, EndOfStream
from inspectd.config.base import NAME_PATTERN
from inspectd.contract.verdict import VerdictRecord
from inspectd.engine import EngineError, load_engine
from inspectd.frame import CameraMeta, Frame
from inspectd.imagefile import decode_image_file
from inspectd.inspection import Inspection
from inspectd.outputs.archive import SUFFIXES, ArchiveEntry, read_entry, scan
from inspectd.pipeline import Pipeline

# Scores are published rounded to 6 decimals; beyond that, a different CPU or runtime build may
# move the last float32 digits. Closer than this is the same score.
SCORE_REL_TOL = 1e-4
SCORE_ABS_TOL = 2e-6
VERDICTS = ("OK", "NG", "ERROR")


class ReplayError(Exception):
    """The archive or a bundle cannot be used at all; the message names the path."""


@dataclass(slots=True)
class ReplayedPart:
    """One archived part, before and after. status: same, changed (the verdict), score_moved
    (same verdict, another score) or not_replayed (no frame, or the entry is damaged)."""

    entry: str  # <date>/<stem>, relative to the archive
    seq: int | None
    part_id: str | None
    product: str | None
    old_verdict: str | None
    old_score: float | None
    old_error: str | None
    status: str = "not_replayed"
    new_verdict: str | None = None
    new_score: float | None = None
    new_error: str | None = None
    map_diff: float | None = None  # largest |new - old| over the anomaly map
    note: str | None = None  # why it was not replayed


@dataclass
class ReplayReport:
    archive: Path
    parts: list[ReplayedPart]
    products: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        status = Counter(p.status for p in self.parts)
        moves = Counter(
            f"{p.old_verdict}->{p.new_verdict}" for p in self.parts if p.status == "changed"
        )
        deltas = [
            abs(p.new_score - p.old_score)
            for p in self.parts
            if p.new_score is not None and p.old_score is not None
        ]
        maps = [p.map_diff for p in self.parts if p.map_diff is not None]
        return {
            "parts": len(self.parts),
            "same": status["same"],
            "changed": status["changed"],
            "score_moved": status["score_moved"],
            "not_replayed": status["not_replayed"],
            "transitions": {
                f"{a}->{b}": moves[f"{a}->{b}"] for a in VERDICTS for b in VERDICTS if a != b
            },
            "max_score_diff": max(deltas, default=None),
            "max_map_diff": max(maps, default=None),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "products": self.products,
            "summary": self.summary(),
            "parts": [asdict(p) for p in self.parts],
        }


# -- reading the archive ---------------------------------------------------------------------


def _entries(archive: Path) -> list[ArchiveEntry]:
    if not archive.is_dir():
        what = "does not exist" if not archive.exists() else "is not a folder"
        raise ReplayError(
            f"{archive}: {what}; give the archive folder (archive.dir of the station)"
        )
    try:
        entries = scan(archive)
    except OSError as exc:
        raise ReplayError(f"{archive}: cannot read the archive: {exc}") from exc
    if not entries:
        raise ReplayError(
            f"{archive}: no archived parts in it (expected "
            "<YYYY-MM-DD>/<seq>-<part_id>-<verdict>.json files)"
        )
    return entries


def _part(archive: Path, entry: ArchiveEntry) -> tuple[ReplayedPart, dict[str, Any] | None]:
    name = str(entry.json_path.relative_to(archive).with_suffix(""))
    try:
        doc = read_entry(entry)
    except (OSError, ValueError) as exc:
        reason = "no JSON file (an incomplete entry)" if not entry.json_path.exists() else str(exc)
        return ReplayedPart(name, None, None, None, None, None, None, note=reason), None
    v = doc["verdict"]
    part = ReplayedPart(
        name,
        v.get("seq"),
        v.get("part_id"),
        v.get("product"),
        v.get("verdict"),
        v.get("score"),
        v.get("error"),
    )
    if not doc.get("frame"):
        part.note = "no frame archived (the part had none)"
        return part, None
    return part, doc


def _read_frame(folder: Path, name: str) -> np.ndarray:
    """The archived frame, decoded as the folder camera decodes files."""
    if Path(name).name != name or not name.endswith(SUFFIXES):
        raise ValueError(f"bad frame file name {name!r}")
    path = folder / name
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    image, reason = decode_image_file(path)
    if image is None:
        raise ValueError(f"{path}: {reason}")
    return image


class _ArchivedFrames(CaptureSource):
    """The frames of some archive entries, in order, as a camera."""

    def __init__(self, items: Sequence[tuple[int, ArchiveEntry, dict[str, Any]]]) -> None:
        self.items = list(items)
        self.unreadable: dict[int, str] = {}
        self.i = 0
        self.camera = CameraMeta(source="archive")

    def open(self) -> None:
        pass

    def grab(self, timeout: float) -> Frame:
        if self.i == len(self.items):
            raise EndOfStream
        index, entry, doc = self.items[self.i]
        self.i += 1
        v = doc["verdict"]
        image, error = None, None
        try:
            image = _read_frame(entry.folder, str(doc["frame"]))
        except Exception as exc:  # a damaged archive file: that part is not replayed
            error = f"archived frame unreadable: {exc}"
            self.unreadable[index] = error
        camera = v.get("camera") or {}
        return Frame(
            image,
            int(camera.get("frame_id", -1)),
            str(v.get("part_id")),
            time.time(),
            time.monotonic(),
            self.camera,
            error=error,
            extra={"entry": str(index)},
        )

    def close(self) -> None:
        pass


class _Collect:
    """What the pipeline decided, by entry index."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[VerdictRecord, np.ndarray | None]] = {}

    def handle(self, inspection: Inspection) -> None:
        self.got[int(inspection.frame.extra["entry"])] = (inspection.record, inspection.anomaly_map)

    def close(self) -> None:
        pass


class _NoRecorder:
    """Replayed verdicts get no seq and go into no outbox."""

    def record(self, records: Sequence[VerdictRecord], receipts: Sequence[str | None] = ()) -> None:
        pass


# -- replaying -------------------------------------------------------------------------------


def _load(products_dir: Path, name: str) -> Bundle:
    if not re.match(NAME_PATTERN, name):
        raise ReplayError(f"product name {name!r}: letters, digits, _ and - only")
    try:
        return load_bundle(products_dir / name)
    except BundleError as exc:
        raise ReplayError(str(exc)) from exc


def _compare(
    part: ReplayedPart,
    record: VerdictRecord,
    new_map: np.ndarray | None,
    entry: ArchiveEntry,
    doc: dict[str, Any],
) -> None:
    part.new_verdict, part.new_score, part.new_error = (
        record.verdict.value,
        record.score,
        record.error,
    )
    if part.old_verdict != part.new_verdict:
        part.status = "changed"
    elif (part.old_score is None) != (part.new_score is None) or (
        part.old_score is not None
        and part.new_score is not None
        and not math.isclose(
            part.new_score, part.old_score, rel_tol=SCORE_REL_TOL, abs_tol=SCORE_ABS_TOL
        )
    ):
        part.status = "score_moved"
    else:
        part.status = "same"
    if new_map is not None and doc.get("map"):
        try:
            old_map = np.load(entry.folder / str(doc["map"]), allow_pickle=False)
            if old_map.shape == new_map.shape:
                part.map_diff = float(np.nanmax(np.abs(new_map.astype(np.float32) - old_map)))
        except (OSError, ValueError):
            pass  # the map is for comparison only; the verdict comparison stands


def replay(archive: Path, products_dir: Path, product: str | None = None) -> ReplayReport:
    """Every archived part with a frame through the bundle `product` (default: the product each
    part was inspected with) in `products_dir`. Raises ReplayError for an unusable archive or
    bundle."""
    entries = _entries(archive)
    parts: list[ReplayedPart] = []
    groups: dict[str, list[tuple[int, ArchiveEntry, dict[str, Any]]]] = {}
    for index, entry in enumerate(entries):
        part, doc = _part(archive, entry)
        parts.append(part)
        if doc is not None:
            name = product or str(part.product)
            groups.setdefault(name, []).append((index, entry, doc))
    bundles = {name: _load(products_dir, name) for name in groups}  # every one, before any work
    report = ReplayReport(archive, parts)
    for name, items in groups.items():
        bundle = bundles[name]
        old_thresholds = sorted(
            {p.get("verdict", {}).get("threshold") for _, _, p in items}, key=str
        )
        old_models = sorted(
            {p.get("verdict", {}).get("model", {}).get("sha256") for _, _, p in items}, key=str
        )
        report.products[name] = {
            "bundle": str(bundle.path),
            "model_sha256": bundle.model_sha256,
            "image_threshold": bundle.thresholds.image,
            "archived_model_sha256": old_models,
            "archived_image_threshold": old_thresholds,
        }
        results = _run(bundle, items)
        for index, entry, doc in items:
            part = parts[index]
            if index in results.unreadable:
                part.note = results.unreadable[index]
                continue
            record, new_map = results.got[index]
            _compare(part, record, new_map, entry, doc)
    return report


@dataclass
class _Results:
    got: dict[int, tuple[VerdictRecord, np.ndarray | None]]
    unreadable: dict[int, str]


def _run(bundle: Bundle, items: list[tuple[int, ArchiveEntry, dict[str, Any]]]) -> _Results:
    try:
        engine = load_engine(bundle.model_path)
    except EngineError as exc:
        raise ReplayError(str(exc)) from exc
    source, collect = _ArchivedFrames(items), _Collect()
    pipeline = Pipeline(
        source=source,
        engine=engine,
        bundle=bundle,
        station="replay",
        recorder=_NoRecorder(),
        sinks=[collect],
    )
    try:
        pipeline.run()
    finally:
        pipeline.close()
    return _Results(collect.got, source.unreadable)


# -- the report --------------------------------------------------------------------------------


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _line(p: ReplayedPart) -> str:
    seq = "-" if p.seq is None else str(p.seq)
    head = f"  seq {seq:<8} {str(p.part_id or p.entry)[:28]:<28}"
    old = f"{str(p.old_verdict):<5} {_score(p.old_score):>9}"
    if p.status == "not_replayed":
        return f"{head} {old}  {p.note}" + (f" [{p.old_error}]" if p.old_error else "")
    new = f"{str(p.new_verdict):<5} {_score(p.new_score):>9}"
    tail = f"  {p.new_error}" if p.new_error and p.new_error != p.old_error else ""
    return f"{head} {old} -> {new}{tail}"


def format_report(report: ReplayReport) -> str:
    s = report.summary()
    out = [f"inspectd replay: {s['parts']} archived parts in {report.archive}"]
    for name, info in report.products.items():
        old_thr = ", ".join(str(t) for t in info["archived_image_threshold"])
        old_sha = ", ".join(str(m)[:12] for m in info["archived_model_sha256"])
        out.append(
            f"  {name}: model {info['model_sha256'][:12]} (archived: {old_sha}), "
            f"image threshold {info['image_threshold']} (archived: {old_thr})"
        )
    for status, title in (
        ("changed", "verdict changed"),
        ("score_moved", "score moved, same verdict"),
        ("not_replayed", "not replayed"),
    ):
        chosen = [p for p in report.parts if p.status == status]
        if chosen:
            out.append(f"{title} ({len(chosen)}):")
            out.extend(_line(p) for p in chosen)
    moves = "  ".join(f"{k} {v}" for k, v in s["transitions"].items() if v) or "none"
    out.append(
        f"Summary: {s['parts']} parts  same {s['same']}  changed {s['changed']}  "
        f"score moved {s['score_moved']}  not replayed {s['not_replayed']}"
    )
    out.append(f"  verdict changes: {moves}")
    if s["max_score_diff"] is not None:
        line = f"  largest score difference {s['max_score_diff']:.6f}"
        if s["max_map_diff"] is not None:
            line += f", largest anomaly-map difference {s['max_map_diff']:.6g}"
        out.append(line)
    return "\n".join(out) + "\n"
