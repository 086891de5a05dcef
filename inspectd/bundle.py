"""The product bundle, the unit of deployment: products/<name>/.

manifest.yaml   what the model is, how frames are prepared, how it was built, sha256 of files
model.onnx      the graph: uint8 NHWC -> anomaly map, score
model.pt        the trained weights (torch state dict): the torch engine and retraining use them
thresholds.yaml what calibration decided, for which model (by sha256)

Loading verifies every hash, so a bundle edited by hand or half-copied is refused instead of
producing verdicts nobody can reproduce. A product folder holds versions of its bundle
(``inspectd.versions``); ``load_bundle`` loads the active one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from inspectd.config.base import StrictModel
from inspectd.config.loader import ConfigError, load_yaml_model
from inspectd.families import FamilyName
from inspectd.preprocess import PreprocessSpec
from inspectd.versions.layout import (
    BASE,
    MANIFEST,
    VersionError,
    active_version,
    checked_path,
    is_product,
)

THRESHOLDS = "thresholds.yaml"
TRAIN_IMAGES = "train_images.sha256"  # lets calibrate refuse images the model was trained on
BUNDLE_SCHEMA = "inspectd.bundle/1"
THRESHOLDS_SCHEMA = "inspectd.thresholds/1"


class BundleError(Exception):
    """The bundle is missing, malformed or does not match its hashes."""


class ModelSpec(StrictModel):
    family: FamilyName = Field(description="model family")
    file: str = Field("model.onnx", description="the exported graph, relative to the bundle")
    opset: int = Field(ge=1, description="ONNX opset of the exported graph")
    params: dict[str, Any] = Field(default_factory=dict, description="architecture settings")
    checkpoint: str | None = Field(
        None, description="trained weights (torch state dict), if shipped"
    )
    settled: str = Field("", description="the paper's open points as this model settles them")


class ScoringSpec(StrictModel):
    """How the graph scores; each method reads only its own settings."""

    method: Literal["msgms_l2", "nll", "patch_distance"] = Field(description="how the graph scores")
    mean_filter: int = Field(21, ge=1, description="mean filter size of the msgms_l2 head")
    scales: int = Field(4, ge=1, description="MSGMS scales")
    c: float = Field(0.0026, gt=0, description="GMS stability constant")
    blur_sigma: float = Field(
        4.0, ge=0, description="patch_distance: Gaussian blur of the map, input pixels"
    )
    image_score: Literal["max", "reweighted", "map_max", "top_mean"] = Field(
        "max",
        description="patch_distance: largest patch distance, the paper's reweighted one, the "
        "blurred map's peak, or the mean of its top_fraction",
    )
    top_fraction: float = Field(
        0.05,
        gt=0,
        le=1,
        description="patch_distance, image_score top_mean: the share of the map averaged",
    )


class VersionRecord(StrictModel):
    """Where a version of a product came from (absent in version 1, the bundle as built)."""

    id: int = Field(gt=BASE, description="the version: its folder versions/<id>")
    parent: int | None = Field(ge=BASE, description="the version it was made from")
    origin: Literal["build", "calibrate", "teach", "refit"] = Field(description="what made it")
    by: str = Field(min_length=1, description="who made it")
    created: str = Field(description="when, UTC ISO 8601")
    parts: int = Field(0, ge=0, description="parts it was made from (listed in parts_file)")
    parts_file: str | None = Field(
        None, description="one line per part: sha256, role (good, defect), path or part id"
    )
    figures: dict[str, Any] = Field(
        default_factory=dict, description="the report's figures (threshold, bound, recall ...)"
    )
    note: str = ""


class Manifest(StrictModel):
    schema_: Literal["inspectd.bundle/1"] = Field(alias="schema")
    name: str
    created: str
    tool_version: str
    model: ModelSpec
    preprocess: PreprocessSpec
    scoring: ScoringSpec
    training: dict[str, Any] = Field(default_factory=dict, description="how it was built")
    metrics: dict[str, Any] = Field(default_factory=dict, description="evaluation at build time")
    files: dict[str, str] = Field(description="file name -> sha256 of every file of the bundle")
    version: VersionRecord | None = Field(None, description="provenance of a later version")


class Thresholds(StrictModel):
    schema_: Literal["inspectd.thresholds/1"] = Field(alias="schema")
    image: float = Field(description="NG when the image score is >= this")
    pixel: float = Field(description="map pixels >= this form defect regions")
    min_region_area: int = Field(1, ge=1, description="smallest region, in map pixels")
    model_sha256: str = Field(description="the model these thresholds were computed for")
    method: str = Field(description="how they were computed")
    n_good: int = Field(ge=0, description="good parts they were computed from")
    target_frr: float | None = Field(None, ge=0, le=1, description="false-reject rate aimed at")
    confidence: float | None = Field(None, gt=0, lt=1, description="confidence of frr_bound")
    frr_bound: float | None = Field(
        None, ge=0, le=1, description="false-reject rate is at most this, with `confidence`"
    )
    quantiles: dict[str, float] = Field(
        default_factory=dict, description="good score quantiles (the drift check's reference)"
    )
    alternatives: dict[str, float] = Field(
        default_factory=dict, description="image thresholds other methods gave, for the record"
    )
    created: str
    tool_version: str

    def short_of_target(self) -> str | None:
        """Why these thresholds do not carry their stated false-reject rate (calibrated from
        fewer good parts than the target needs, as ``calibrate --force`` allows); else None."""
        if self.target_frr is None or not 0 < self.target_frr < 1:
            return None  # max_of_good: no rate stated
        from inspectd.threshold_stats import CONFIDENCE, parts_needed

        confidence = self.confidence or CONFIDENCE
        need = parts_needed(self.target_frr, confidence)
        if self.n_good >= need:
            return None
        return (
            f"calibrated from {self.n_good} good part{'s' if self.n_good != 1 else ''}, fewer "
            f"than the {need} a false-reject rate of {self.target_frr:g} needs at "
            f"{confidence:.0%} confidence: calibrate from the bundle's good parts with the "
            "reviewed ones added (inspectd calibrate --images GOOD --images REVIEWED), or "
            "state a target those parts support (--target-frr)"
        )

    def facts(self) -> dict[str, Any]:
        """How they were calibrated, for …/health (the UI's calibration panel and drift picture)."""
        keys = ("method", "n_good", "target_frr", "confidence", "frr_bound", "quantiles", "created")
        return {k: getattr(self, k) for k in keys}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path  # the folder of its files: the product folder, or versions/<n> in it
    manifest: Manifest
    thresholds: Thresholds
    version: int = BASE

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def product_dir(self) -> Path:
        """products/<name>/, whichever version this is."""
        return self.path if self.version == BASE else self.path.parent.parent

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model.file

    @property
    def model_sha256(self) -> str:
        return self.manifest.files[self.manifest.model.file]


def load_bundle(product: Path, version: int | None = None) -> Bundle:
    """Load and verify products/<name>/ at its active version (or at ``version``); raises
    BundleError saying what is wrong and where."""
    if version is None and not is_product(product):  # a named version may be one not active yet
        raise BundleError(f"{product}: not a product bundle (no {MANIFEST})")
    try:
        number = active_version(product) if version is None else version
        path = checked_path(product, number)
    except VersionError as exc:
        raise BundleError(str(exc)) from exc
    return load_bundle_folder(path, product.name, number)


def load_bundle_folder(path: Path, name: str, number: int) -> Bundle:
    """Load and verify the bundle in ``path`` as version ``number`` of product ``name`` (a
    version about to be published is checked with it)."""
    try:
        manifest = load_yaml_model(path / MANIFEST, Manifest)
    except ConfigError as exc:
        raise BundleError(str(exc)) from exc
    if manifest.name != name:
        # stations, commands and reloads find a bundle by name: the folder must carry it
        raise BundleError(
            f"{path / MANIFEST}: name {manifest.name!r} does not match its folder {name!r}; "
            f"rename the folder to {manifest.name!r}"
        )
    recorded = manifest.version.id if manifest.version is not None else BASE
    if recorded != number:  # a version folder copied or renamed by hand
        raise BundleError(f"{path / MANIFEST}: records version {recorded}, its folder is {number}")
    for required in (manifest.model.file, THRESHOLDS):
        if required not in manifest.files:
            raise BundleError(f"{path / MANIFEST}: files does not list {required}")
    for file, want in manifest.files.items():
        f = path / file
        if not f.is_file():
            raise BundleError(f"{f}: missing (listed in {MANIFEST})")
        got = sha256_of(f)
        if got != want:
            raise BundleError(
                f"{f}: sha256 {got[:12]}… does not match the manifest ({want[:12]}…); the file "
                f"was changed after the bundle was sealed — restore it or rebuild the bundle"
            )
    try:
        thresholds = load_yaml_model(path / THRESHOLDS, Thresholds)
    except ConfigError as exc:
        raise BundleError(str(exc)) from exc
    model_sha = manifest.files[manifest.model.file]
    if thresholds.model_sha256 != model_sha:
        raise BundleError(
            f"{path / THRESHOLDS}: made for model {thresholds.model_sha256[:12]}…, the bundle's "
            f"model is {model_sha[:12]}…; recalibrate (inspectd calibrate --product "
            f"{manifest.name})"
        )
    return Bundle(path=path, manifest=manifest, thresholds=thresholds, version=number)
