"""`inspectd calibrate`: score known-good parts (and defects, if given) with the bundle's own
model and preprocessing, set the thresholds, and write them with the report as a new version of
the product (inspectd.versions), which becomes the active one.

Runs on the inspection box (ONNX Runtime, no torch). Nothing on disk changes until every number
is computed, and the version calibrated stays as it was: a rollback goes back to it.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from tqdm import tqdm

from inspectd import threshold_stats as stats
from inspectd.accuracy import auroc, f1_max, operating_points, recall_at_points
from inspectd.bundle import (
    MANIFEST,
    THRESHOLDS,
    TRAIN_IMAGES,
    Bundle,
    BundleError,
    Thresholds,
    load_bundle,
    sha256_of,
)
from inspectd.bundle_seal import write_thresholds
from inspectd.calibrate.thresholds import (
    MAP_PIXELS,
    PIXEL_QUANTILE,
    pixel_threshold,
    record,
    region_areas,
)
from inspectd.decide import regions_of, rejects
from inspectd.engine import Engine, load_engine
from inspectd.engine.base import infer_batches
from inspectd.preprocess import PreprocessError, load_inputs, preprocess
from inspectd.reviews import is_reviewed_frame
from inspectd.train.datasets.mvtec import GOOD, Sample, image_files
from inspectd.versions.store import (
    DEFAULT_KEEP,
    Origin,
    Part,
    Provenance,
    VersionStoreError,
    parent_manifest,
    write_version,
)

log = structlog.get_logger(__name__)

BATCH = 16


class CalibrationError(Exception):
    """Calibration refused (too few parts, training images, unreadable input): the message
    says why and what to do; the bundle is left as it was."""


@dataclass
class Request:
    bundle_dir: Path  # the product folder: its active version is calibrated
    images: list[Path] | None = None  # good parts from files (folders taken together) ...
    files: list[Path] | None = None  # ... or these files (a teach's calibration share) ...
    camera: Any = None  # ... or live from a station's camera (its config section)
    count: int = 0
    defects: Path | None = None
    defect_samples: list[Sample] | None = None  # defects as files (reviewed true defects)
    target_frr: float = 0.001
    confidence: float = stats.CONFIDENCE
    method: str = "order"  # order | tail
    force: bool = False
    drop_training: bool = False
    replace: bool = False  # fewer parts than the bundle's calibration may replace it
    pixel_quantile: float = PIXEL_QUANTILE
    min_area: int | None = None  # map pixels; None keeps the bundle's
    progress: bool = True
    by: str = "unknown"  # who calibrates: the new version's provenance
    keep: int = DEFAULT_KEEP  # versions of the product kept on disk


@dataclass
class Scored:
    """What the model made of a set of parts."""

    names: list[str]
    scores: np.ndarray  # N
    maps: np.ndarray  # N x h x w
    inputs: np.ndarray  # N x h x w x 3, RGB model inputs (thumbnails of the worst parts)
    defects: list[str] = field(default_factory=list)  # defect type per part (defect sets)
    masks: np.ndarray | None = None  # N x h x w bool, when every defect has a mask
    digests: list[str] = field(default_factory=list)  # sha256 per part: file, or frame pixels


@dataclass
class Result:
    bundle: Bundle
    good: Scored
    defects: Scored | None
    order: stats.OrderThreshold
    tail: stats.TailFit | None
    tail_error: str | None
    image: float
    pixel: float
    min_area: int
    good_regions: list[int]  # region areas good parts show at the pixel threshold
    method: str
    dropped_training: int
    skipped: list[str]  # parts that could not be inspected, with the reason
    defect_metrics: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    version: Bundle | None = None  # the version write() made


# -- input ---------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: no such folder of images")
    return image_files(folder)


def good_images(folders: list[Path]) -> list[Path]:
    """Every image in the folders, each file once: a reviewed frame is a hard link of its
    archived one, so the same part can sit in two of them."""
    seen: set[str] = set()
    out = []
    for folder in folders:
        for p in _image_files(folder):
            digest = sha256_of(p)
            if digest not in seen:
                seen.add(digest)
                out.append(p)
    return out


def _only_reviewed(paths: list[Path], folders: list[Path]) -> None:
    """Reviewed parts are added to a calibration set, never one of their own: a folder of a
    few operator-reviewed false rejects calibrated alone moved the threshold 5x (issue 35)."""
    if paths and all(is_reviewed_frame(p) for p in paths):
        shown = " ".join(f"--images {f}" for f in folders)
        raise CalibrationError(
            f"all {len(paths)} images in {', '.join(map(str, folders))} are reviewed parts: "
            "they are added to the good parts a calibration is made from, never used alone; "
            f"give those good parts too (--images GOOD {shown})"
        )


def _replacing(n: int, bundle: Bundle, req: Request) -> None:
    """Fewer good parts than the bundle's own calibration replace it only when asked."""
    before = bundle.thresholds.n_good
    if n < before and not req.replace:
        raise CalibrationError(
            f"{n} good part{'s' if n != 1 else ''} would replace the calibration of "
            f"{bundle.name} from {before}; calibrate from its good parts with the new ones "
            f"added (--images GOOD --images MORE), or --replace to calibrate from these {n} alone"
        )


def training_hashes(bundle: Bundle) -> set[str]:
    path = bundle.path / TRAIN_IMAGES
    if not path.is_file():
        return set()
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


def split_training(paths: list[Path], trained: set[str]) -> tuple[list[Path], list[Path]]:
    """(images not used for training, images that were), by file sha256."""
    fresh: list[Path] = []
    seen: list[Path] = []
    for p in paths:
        (seen if sha256_of(p) in trained else fresh).append(p)
    return fresh, seen


def _bar(total: int, desc: str, on: bool) -> Any:
    return tqdm(total=total, desc=desc, unit="part", disable=not on, file=sys.stderr)


def _score(
    engine: Engine, batches: Iterator[np.ndarray], total: int, desc: str, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inputs: list[np.ndarray] = []

    def kept(bar: Any) -> Iterator[np.ndarray]:
        for x in batches:
            inputs.append(x)
            yield x
            bar.update(len(x))

    with _bar(total, desc, progress) as bar:
        r = infer_batches(engine, kept(bar))
        bar.n = total  # skipped parts count as done
        bar.refresh()
    if not inputs:
        return r.score, r.anomaly_map, np.empty((0, 1, 1, 3), np.uint8)
    return r.score, r.anomaly_map, np.concatenate(inputs)


def score_files(
    engine: Engine, bundle: Bundle, paths: list[Path], desc: str, progress: bool
) -> tuple[Scored, list[str]]:
    """Score image files with the daemon's preprocessing; unreadable files are skipped and
    named (they would be ERROR verdicts on the line, not good parts)."""
    spec = bundle.manifest.preprocess
    kept: list[Path] = []
    digests: list[str] = []
    skipped: list[str] = []

    def batches() -> Iterator[np.ndarray]:
        ready = []
        for p in paths:
            try:
                ready.append(load_inputs([p], spec)[0])
                kept.append(p)
                digests.append(sha256_of(p))
            except (PreprocessError, OSError, ValueError) as exc:
                skipped.append(str(exc) if str(p) in str(exc) else f"{p}: {exc}")
            if len(ready) == BATCH:
                yield np.stack(ready)
                ready = []
        if ready:
            yield np.stack(ready)

    scores, maps, inputs = _score(engine, batches(), len(paths), desc, progress)
    return Scored([str(p) for p in kept], scores, maps, inputs, digests=digests), skipped


def score_camera(
    engine: Engine, bundle: Bundle, camera: Any, count: int, progress: bool
) -> tuple[Scored, list[str]]:
    """Grab `count` good parts from a station's camera config (the daemon must not hold it)."""
    from inspectd.capture import open_source
    from inspectd.capture.base import CaptureTimeout, EndOfStream

    timeout = getattr(camera, "timeout_s", 5.0)
    spec = bundle.manifest.preprocess
    names: list[str] = []
    digests: list[str] = []
    skipped: list[str] = []
    grabbed: list[np.ndarray] = []
    with open_source(camera) as source, _bar(count, "capturing", progress) as bar:
        while len(grabbed) < count:
            try:
                frame = source.grab(timeout=timeout)
            except EndOfStream:
                break
            except CaptureTimeout:
                skipped.append(f"no frame within {timeout} s")
                if len(skipped) > max(10, count // 10):
                    raise CalibrationError(f"the camera gave no frames ({skipped[-1]})") from None
                continue
            try:
                if frame.error or frame.image is None:
                    raise PreprocessError(frame.error or "the frame holds no image")
                grabbed.append(preprocess(frame.image, spec)[0])
                names.append(frame.part_id)
                digests.append(hashlib.sha256(frame.image.tobytes()).hexdigest())
                bar.update(1)
            except PreprocessError as exc:
                skipped.append(f"{frame.part_id}: {exc}")
    if len(grabbed) < count:
        log.warning("calibrate.camera_short", wanted=count, got=len(grabbed))
    chunks = (np.stack(grabbed[i : i + BATCH]) for i in range(0, len(grabbed), BATCH))
    scores, maps, inputs = _score(engine, chunks, len(grabbed), "scoring", progress)
    return Scored(names, scores, maps, inputs, digests=digests), skipped


def defect_samples(folder: Path) -> list[Sample]:
    """Defective parts: ``folder/<defect type>/*`` (an MVTec test/ folder, whose good/ is left
    out) or images directly in ``folder``; masks where MVTec's ground_truth/ has them."""
    from inspectd.train.datasets.mvtec import expected_mask_path

    if (folder / "test").is_dir():  # an MVTec category root
        folder = folder / "test"
    samples = []
    for p in _image_files(folder):
        rel = p.relative_to(folder)
        defect = rel.parts[0] if len(rel.parts) > 1 else "defect"
        if defect == GOOD:
            continue
        mask = expected_mask_path(p, defect)
        samples.append(Sample(p, defect, mask if mask.is_file() else None))
    if not samples:
        raise CalibrationError(f"{folder}: no defect images (expected <defect type>/*.png)")
    return samples


def score_defects(engine: Engine, bundle: Bundle, samples: list[Sample], progress: bool) -> Scored:
    from inspectd.train.evaluate import mask_like_input

    scored, skipped = score_files(engine, bundle, [s.path for s in samples], "defects", progress)
    if skipped:
        raise CalibrationError(f"{len(skipped)} defect image(s) unreadable: {skipped[0]}")
    scored.defects = [s.defect for s in samples]
    if all(s.mask_path is not None for s in samples):
        hw = scored.maps.shape[1:]
        spec = bundle.manifest.preprocess
        scored.masks = np.stack([mask_like_input(s, spec, hw) for s in samples])
    return scored


# -- decisions -----------------------------------------------------------------------------------


def _too_few(n: int, req: Request) -> str:
    need = stats.parts_needed(req.target_frr, req.confidence)
    best = stats.frr_upper_bound(0, n, req.confidence)
    return (
        f"a false-reject rate of at most {req.target_frr:g} with {req.confidence:.0%} "
        f"confidence needs at least {need} good parts; got {n}. {n} parts support a target of "
        f"{best:.4g} (--target-frr {best:.4g}); add parts, or --force to use the highest good "
        f"score (false-reject rate at most {best:.4g} with {req.confidence:.0%} confidence)"
    )


def defect_metrics(
    good: Scored, defects: Scored, image: float, pixel: float, min_area: int
) -> dict[str, Any]:
    labels = np.r_[np.zeros(good.scores.size, bool), np.ones(defects.scores.size, bool)]
    scores = np.r_[good.scores, defects.scores]
    found = rejects(defects.scores, image)
    f1, f1_threshold = f1_max(labels, scores)
    points = operating_points(labels, scores)
    types = np.asarray(defects.defects)
    out: dict[str, Any] = {
        "n_defects": int(defects.scores.size),
        "recall": float(found.mean()),
        # empirical, on these good parts: what the model can do, whatever threshold is chosen
        "recall_at_frr": points,
        "recall_at_frr_by_type": {
            d: recall_at_points(points, defects.scores[types == d])
            for d in sorted(set(defects.defects))
        },
        "image_auroc": auroc(labels, scores),
        "f1_threshold": f1_threshold,
        "f1_max": f1,
        "recall_by_type": {
            d: float(found[[t == d for t in defects.defects]].mean())
            for d in sorted(set(defects.defects))
        },
    }
    if defects.masks is not None:
        pix_labels = np.r_[np.zeros(good.maps.size, bool), defects.masks.ravel()]
        pix_scores = np.r_[good.maps.ravel(), defects.maps.ravel()]
        out["pixel_auroc"] = auroc(pix_labels, pix_scores)
        covered = defects.masks.sum()
        out["pixel_recall"] = float((defects.maps[defects.masks] >= pixel).sum() / max(1, covered))
        # found defects whose reported regions (the daemon's rule) touch the defect
        hits = [
            any(
                defects.masks[i][r.y : r.y + r.h, r.x : r.x + r.w].any()
                for r in regions_of(defects.maps[i], pixel, min_area, MAP_PIXELS)
            )
            for i in np.flatnonzero(found)
        ]
        out["located"] = float(np.mean(hits)) if hits else float("nan")
    return out


def calibrate(req: Request) -> Result:
    try:
        bundle = load_bundle(req.bundle_dir)
    except BundleError as exc:
        raise CalibrationError(str(exc)) from exc
    return calibrate_bundle(bundle, req)


def calibrate_bundle(bundle: Bundle, req: Request) -> Result:
    """Thresholds for ``bundle`` from the good parts of ``req`` (teach calibrates the model it
    has just fitted, before it is a version)."""
    if not 0 < req.target_frr < 1:
        raise CalibrationError(f"--target-frr must be between 0 and 1, got {req.target_frr}")
    engine = load_engine(bundle.model_path)
    try:
        skipped: list[str] = []
        dropped = 0
        if req.images or req.files:
            paths = list(req.files or [])
            if req.images:
                paths = good_images(req.images)
                _only_reviewed(paths, req.images)
            fresh, trained = split_training(paths, training_hashes(bundle))
            if trained and not req.drop_training:
                where = ", ".join(map(str, req.images)) if req.images else "the files given"
                raise CalibrationError(
                    f"{len(trained)} of {len(paths)} images in {where} were used to train "
                    f"this model (e.g. {trained[0].name}); their scores are optimistic and would "
                    "set the threshold too low. Remove them, or --drop-training to leave them out"
                )
            dropped = len(trained)
            if dropped:
                log.warning("calibrate.training_images_dropped", count=dropped, of=len(paths))
            good, skipped = score_files(engine, bundle, fresh, "good parts", req.progress)
        elif req.camera is not None:
            good, skipped = score_camera(engine, bundle, req.camera, req.count, req.progress)
        else:
            raise CalibrationError("give good parts: --images DIR, or --config FILE --count N")
        if good.scores.size == 0:
            raise CalibrationError(
                "no good part could be scored" + (f": {skipped[0]}" if skipped else "")
            )
        _replacing(int(good.scores.size), bundle, req)
        order = stats.order_statistic_threshold(good.scores, req.target_frr, req.confidence)
        if not order.enough and not req.force:
            raise CalibrationError(_too_few(order.n, req))
        tail, tail_error = None, None
        try:
            tail = stats.tail_fit_threshold(good.scores, req.target_frr, req.confidence)
        except ValueError as exc:
            tail_error = str(exc)
        if req.method == "tail":
            if tail is None:
                raise CalibrationError(f"--method tail: {tail_error}")
            image, method = tail.upper, "generalised Pareto tail fit (bootstrap upper bound)"
        else:
            image, method = order.threshold, "order statistic (one-sided binomial bound)"
        samples = defect_samples(req.defects) if req.defects else req.defect_samples
        defects = score_defects(engine, bundle, samples, req.progress) if samples else None
    finally:
        engine.close()

    pixel = pixel_threshold(good.maps, image, req.pixel_quantile)
    min_area = req.min_area or bundle.thresholds.min_region_area
    metrics = defect_metrics(good, defects, image, pixel, min_area) if defects is not None else {}
    return Result(
        bundle=bundle,
        good=good,
        defects=defects,
        order=order,
        tail=tail,
        tail_error=tail_error,
        image=image,
        pixel=pixel,
        min_area=min_area,
        good_regions=region_areas(good.maps, pixel),
        method=method,
        dropped_training=dropped,
        skipped=skipped,
        defect_metrics=metrics,
    )


def thresholds_of(result: Result, req: Request, model_sha256: str) -> Thresholds:
    """The thresholds file's record of ``result``, for the model ``model_sha256``."""
    alternatives = {"order_statistic": result.order.threshold}
    if result.tail is not None:
        alternatives["tail_fit"] = result.tail.threshold
        alternatives["tail_fit_upper"] = result.tail.upper
    if result.defect_metrics:
        alternatives["f1_optimal"] = result.defect_metrics["f1_threshold"]
    bound = result.order.frr_bound if result.method.startswith("order") else None
    return record(
        image=result.image,
        pixel=result.pixel,
        min_area=result.min_area,
        model_sha256=model_sha256,
        method=f"{result.method}; pixel: quantile {req.pixel_quantile} of good map pixels",
        scores=result.good.scores,
        target_frr=req.target_frr,
        confidence=req.confidence,
        frr_bound=bound,
        alternatives=alternatives,
    )


def write(result: Result, req: Request) -> list[Path]:
    """The report and thresholds as a new version of the product, made from the version
    calibrated, sealed and then made active (inspectd.versions.store)."""
    from inspectd.calibrate.report import write_report

    thresholds = thresholds_of(result, req, result.bundle.model_sha256)
    report: list[str] = []

    def fill(stage: Path, parent: Bundle | None) -> tuple[dict[str, Any], list[str]]:
        assert parent is not None  # calibrate makes a version of an existing one
        report.extend(f.name for f in write_report(result, thresholds, stage))
        write_thresholds(stage, thresholds)
        return parent_manifest(parent), [*parent.manifest.files, *report]

    try:
        version = write_version(
            req.bundle_dir,
            provenance(result, thresholds.frr_bound, req),
            fill,
            parent=result.bundle.version,
            keep=req.keep,
        )
    except VersionStoreError as exc:
        raise CalibrationError(str(exc)) from exc
    result.version = version
    return [*(version.path / f for f in report), version.path / THRESHOLDS, version.path / MANIFEST]


def provenance(
    result: Result, frr_bound: float | None, req: Request, origin: Origin = "calibrate"
) -> Provenance:
    """Who calibrated, from which parts, and the report's figures: the version's record."""
    parts = [Part(n, d) for n, d in zip(result.good.names, result.good.digests, strict=True)]
    if result.defects is not None:
        d = result.defects
        parts += [Part(n, h, "defect") for n, h in zip(d.names, d.digests, strict=True)]
    figures: dict[str, Any] = {
        "n_good": int(result.good.scores.size),
        "image_threshold": float(result.image),
        "pixel_threshold": float(result.pixel),
        "target_frr": req.target_frr,
        "frr_bound": frr_bound,
        "method": req.method,
        "dropped_training": result.dropped_training,
        "skipped": len(result.skipped),
    }
    m = result.defect_metrics
    if m:
        figures.update(
            n_defects=m["n_defects"], recall=m["recall"], image_auroc=float(m["image_auroc"])
        )
    return Provenance(origin=origin, by=req.by, parts=parts, figures=figures)
