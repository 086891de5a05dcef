"""Teach a product at the station: good parts -> the feature memory (patchcore) -> thresholds with
a stated false-reject bound -> a new version of the product, not active until an operator
accepts it (``inspectd.versions.store.activate``) or discards it.

The parts are split, seeded: the memory is fitted on ``fit_share`` of them and the rest are the
calibration set, scored by that memory (which has not seen them) and calibrated by
``inspectd.calibrate.calibration`` itself, the bound stated for however many there are. The
version then ships a memory fitted on every part, as ``inspectd train`` does (docs/models.md:
a memory from every good image misses fewer rare good variations): it has seen more good parts
than the one calibrated, so the stated bound is on the safe side. The known defects (reviewed
true defects, or a folder) are scored by both: the report's recall is the calibrated model's,
``defects_caught`` the shipped one's.

A refit is a teach from the parts the active version was taught with plus the parts operators
reviewed as false rejects (into the memory and the calibration set).

Everything is computed in a work folder inside ``versions/`` and becomes a version only through
``store.write_version`` (staged, sealed, renamed): a kill at any moment leaves the active version
as it was and no version half-written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import yaml

from inspectd.bundle import (
    MANIFEST,
    THRESHOLDS,
    TRAIN_IMAGES,
    Bundle,
    BundleError,
    load_bundle,
    load_bundle_folder,
    sha256_of,
)
from inspectd.bundle_seal import seal, write_thresholds
from inspectd.calibrate import calibration as cal
from inspectd.calibrate.thresholds import max_of_good
from inspectd.deploy.export import PARITY_TOLERANCE, export_onnx, parity, torch_results
from inspectd.engine import load_engine
from inspectd.imagefile import read_image
from inspectd.models.patchcore import PatchCore
from inspectd.preprocess import PreprocessSpec, load_inputs
from inspectd.threshold_stats import CONFIDENCE
from inspectd.train.datasets.mvtec import Sample
from inspectd.train.families import family
from inspectd.train.memory import fit_memory
from inspectd.train.train_bundle import (
    CHECKPOINT,
    BuildRequest,
    build_model,
    manifest_head,
    scoring_spec,
)
from inspectd.versions import layout
from inspectd.versions.store import (
    DEFAULT_KEEP,
    Origin,
    Part,
    VersionStoreError,
    parent_manifest,
    workspace,
    write_version,
)

log = structlog.get_logger(__name__)

FAMILY = "patchcore"
MIN_PARTS = 4  # two to fit, two to calibrate: fewer is no teach
TAUGHT_ROLES = ("fit", "good")  # parts.sha256 roles a refit takes again
# Patches the coreset chooses from (a seeded random subset above it, train.memory). Its greedy
# pass reads every projected patch (128 floats) once per memory patch: 24 000 of them (12 MB,
# 30 parts at 224 px) stay in this CPU's 32 MB L3 and took 2 s; 47 000 (60 parts) fell out of it
# and took 47 s (2-core VM, 2026-12-07). A teach must stay near a minute.
MAX_PATCHES = 24_000


class TeachError(Exception):
    """No version written: too few parts, unreadable ones, a refit with nothing to start from;
    the message says what to do. The active version is unchanged."""


@dataclass
class TeachRequest:
    product_dir: Path  # products/<name>; need not exist (a new product)
    good: list[Path]  # the good parts taught (image files)
    reviewed: list[Path] = field(default_factory=list)  # reviewed false rejects (a refit)
    defects: list[Sample] = field(default_factory=list)  # known defects: the report's set
    origin: Origin = "teach"
    fit_share: float = 0.5
    target_frr: float = 0.01
    confidence: float = CONFIDENCE
    input_size: int = 224  # a new product's; an existing patchcore product keeps its own
    seed: int = 0
    by: str = "unknown"
    note: str = ""
    keep: int = DEFAULT_KEEP
    progress: bool = True


@dataclass
class Taught:
    version: Bundle  # written, not active
    calibration: cal.Result  # the calibrated (fit-share) model's
    figures: dict[str, Any]
    seconds: float


def split(paths: list[Path], share: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(fit, calibrate): a seeded shuffle, at least one part on each side when there are two."""
    order = np.random.default_rng(seed).permutation(len(paths))
    n_fit = min(max(1, round(share * len(paths))), max(1, len(paths) - 1))
    return [paths[i] for i in sorted(order[:n_fit])], [paths[i] for i in sorted(order[n_fit:])]


def distinct(paths: list[Path]) -> list[Path]:
    """Each image once (by content): a reviewed frame may be a hard link of a taught one."""
    seen: set[str] = set()
    out = []
    for p in paths:
        digest = sha256_of(p)
        if digest not in seen:
            seen.add(digest)
            out.append(p)
    return out


def taught_parts(product: Path) -> list[Path]:
    """The good parts the active version was made from, each still on disk with the same bytes:
    what a refit starts from. A recalibration lists only its calibration parts, so the
    versions it was made from are read too, back to the teach or refit that fitted the memory."""
    try:
        number: int | None = load_bundle(product).version
    except BundleError as exc:
        raise TeachError(f"nothing to refit: {exc}") from exc
    out: dict[str, Path] = {}  # by sha256: a part listed by two versions counts once
    gone = 0
    while number is not None and number in layout.version_ids(product):
        folder = layout.version_path(product, number)
        record = (yaml.safe_load((folder / MANIFEST).read_text()) or {}).get("version") or {}
        listed = folder / str(record.get("parts_file") or "")
        for line in listed.read_text().splitlines() if listed.is_file() else []:
            digest, role, name = line.split(None, 2)
            path = Path(name)
            if role not in TAUGHT_ROLES or digest in out:
                continue
            if path.is_file() and sha256_of(path) == digest:
                out[digest] = path
            else:
                gone += 1
        if record.get("origin") in ("teach", "refit"):
            break
        number = record.get("parent")
    if gone:
        log.warning("teach.parts_missing", missing=gone, found=len(out), product=product.name)
    if not out:
        raise TeachError(
            f"{product.name}: its active version lists no good parts still on disk (a bundle as "
            "built lists none): teach it first (inspectd teach --images DIR), or give the good "
            "parts with --from-reviews --images DIR"
        )
    return list(out.values())


def _setup(product: Path, req: TeachRequest) -> tuple[Bundle | None, PreprocessSpec, BuildRequest]:
    """The active version (None for a new product), how frames are prepared and the model's
    settings: an existing patchcore product keeps its own, anything else gets the defaults."""
    active = None
    if layout.is_product(product):
        try:
            active = load_bundle(product)
        except BundleError as exc:
            raise TeachError(f"no version written: {exc}") from exc
    if active is not None and active.manifest.model.family == FAMILY:
        spec = active.manifest.preprocess
        params = dict(active.manifest.model.params)
        scoring = {k: v for k, v in active.manifest.scoring.model_dump().items() if k != "method"}
        scoring = {k: scoring[k] for k in family(FAMILY).scoring if k in scoring}
    else:
        sizes = {read_image(p).shape[:2] for p in req.good[:16]}
        roi = active.manifest.preprocess.roi if active is not None else None
        spec = PreprocessSpec(
            size=(req.input_size, req.input_size),
            roi=roi,
            source_size=sizes.pop() if len(sizes) == 1 else None,
        )
        params, scoring = {"input_size": req.input_size}, {}
    build = BuildRequest(product.name, product, product, FAMILY, params, scoring)
    return active, spec, build


def _fitted(
    folder: Path,
    build: BuildRequest,
    spec: PreprocessSpec,
    paths: list[Path],
    probe: list[Path],
    seed: int,
) -> Bundle:
    """A bundle in ``folder`` whose memory holds ``paths`` (preliminary thresholds: the
    calibration replaces them), loaded as the daemon would. ``probe``: parts for the parity
    check, the calibration set (a part's own patches in a small memory score ~0 in both
    runtimes, where their rounding differs by more than the check allows)."""
    fam = family(FAMILY)
    torch.manual_seed(seed)
    model, params, weights = build_model(build, fam)
    assert isinstance(model, PatchCore)
    scoring = scoring_spec(fam, build.scoring)
    images = load_inputs(paths, spec)
    log.info("teach.fitting", parts=len(paths), folder=folder.name)
    fitted = fit_memory(model, images, seed=seed, max_patches=MAX_PATCHES, progress=False)
    graph = fam.graph(model.cpu().eval(), scoring)
    folder.mkdir()
    torch.save(model.state_dict(), folder / CHECKPOINT)
    onnx_path = export_onnx(graph, folder / "model.onnx", spec.size)
    diff = parity(graph, onnx_path, load_inputs(probe[:4], spec))
    if diff > PARITY_TOLERANCE:
        raise TeachError(f"ONNX Runtime disagrees with torch: max map difference {diff:.2e}")
    own = torch_results(graph, images[:8])
    write_thresholds(folder, max_of_good(own.score, own.anomaly_map, sha256_of(onnx_path)))
    (folder / TRAIN_IMAGES).write_text("".join(f"{sha256_of(p)}  {p}\n" for p in paths))
    manifest = {
        **manifest_head(build.product, fam, params, spec, scoring),
        "training": {
            "command": "inspectd teach",
            "images": len(paths),
            "fit": {"memory": fitted.memory, "patches": fitted.patches, "seconds": fitted.seconds},
            "seed": seed,
            "torch": str(torch.__version__),
            "onnx_parity_max": float(f"{diff:.3g}"),
            **weights,
        },
        "metrics": {},
    }
    seal(folder, manifest, ["model.onnx", CHECKPOINT, THRESHOLDS, TRAIN_IMAGES])
    try:
        return load_bundle_folder(folder, build.product, layout.BASE)
    except BundleError as exc:
        raise TeachError(f"the fitted model does not load: {exc}") from exc


def _caught(bundle: Bundle, defects: list[Sample], image: float, progress: bool) -> int:
    """How many of the known defects ``bundle`` rejects at ``image``."""
    engine = load_engine(bundle.model_path)
    try:
        scored = cal.score_defects(engine, bundle, defects, progress)
    finally:
        engine.close()
    return int((scored.scores >= image).sum())


def teach(req: TeachRequest) -> Taught:
    t0 = time.monotonic()
    product = req.product_dir
    good = distinct(req.good)
    reviewed = [p for p in distinct(req.reviewed) if p not in set(good)]
    if len(good) + len(reviewed) < MIN_PARTS:
        raise TeachError(
            f"{len(good) + len(reviewed)} good part(s): a teach needs at least {MIN_PARTS} (some "
            "to fit the memory, the rest to calibrate); a false-reject bound of "
            f"{req.target_frr:g} needs far more"
        )
    if not 0 < req.fit_share < 1:
        raise TeachError(f"--fit-share must be between 0 and 1, got {req.fit_share}")
    active, spec, build = _setup(product, req)
    fit, calib = split(good, req.fit_share, req.seed)
    r_fit, r_calib = (
        split(reviewed, req.fit_share, req.seed) if len(reviewed) > 1 else (reviewed, [])
    )
    fit, calib = fit + r_fit, calib + r_calib
    cal_req = cal.Request(
        bundle_dir=product,
        files=calib,
        defect_samples=req.defects or None,
        target_frr=req.target_frr,
        confidence=req.confidence,
        force=True,  # a teach states the bound its parts support, whatever the target
        replace=True,
        progress=req.progress,
        by=req.by,
        keep=req.keep,
    )
    with workspace(product) as work:
        first = _fitted(work / "fit", build, spec, fit, calib, req.seed)
        try:
            result = cal.calibrate_bundle(first, cal_req)
        except cal.CalibrationError as exc:
            raise TeachError(str(exc)) from exc
        shipped = _fitted(work / "all", build, spec, fit + calib, calib, req.seed)
        thresholds = cal.thresholds_of(result, cal_req, shipped.model_sha256)
        prov = cal.provenance(result, thresholds.frr_bound, cal_req, req.origin)
        prov.parts = [Part(str(p), sha256_of(p), "fit") for p in fit] + prov.parts
        prov.figures.update(
            n_fit=len(fit), n_reviewed=len(reviewed), fit_share=req.fit_share, family=FAMILY
        )
        if req.defects:
            prov.figures["defects_caught"] = _caught(
                shipped, req.defects, thresholds.image, req.progress
            )
        prov.note = req.note
        report: list[str] = []

        def fill(stage: Path, parent: Bundle | None) -> tuple[dict[str, Any], list[str]]:
            from inspectd.calibrate.report import write_report

            for name in shipped.manifest.files:
                if name != THRESHOLDS:
                    (stage / name).hardlink_to(shipped.path / name)
            write_thresholds(stage, thresholds)
            report.extend(f.name for f in write_report(result, thresholds, stage))
            manifest = parent_manifest(shipped)
            manifest["training"]["command"] = f"inspectd teach ({req.origin})"
            return manifest, [*shipped.manifest.files, *report]

        try:
            version = write_version(
                product,
                prov,
                fill,
                parent=None if active is None else active.version,
                activate=False,
                keep=req.keep,
            )
        except VersionStoreError as exc:
            raise TeachError(str(exc)) from exc
    seconds = round(time.monotonic() - t0, 1)
    log.info("teach.done", product=product.name, version=version.version, seconds=seconds)
    return Taught(version, result, dict(prov.figures), seconds)
