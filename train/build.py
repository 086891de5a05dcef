"""Train a model on a product's good images and write a sealed bundle.

data (MVTec layout) -> preprocess -> 80/20 split -> train -> export ONNX -> parity check ->
thresholds from the held-out good parts -> evaluation on test/ -> manifest with provenance.
Scoring for thresholds and metrics runs through ONNX Runtime, the daemon's own engine, so the
numbers in the manifest are the ones the daemon will reproduce.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import torch

from inspectd import __version__
from inspectd.bundle import BUNDLE_SCHEMA, THRESHOLDS, TRAIN_IMAGES, load_bundle, sha256_of
from inspectd.calibrate.thresholds import max_of_good
from inspectd.deploy.bundle import seal, write_thresholds
from inspectd.deploy.export import OPSET, export_onnx, parity
from inspectd.engine.onnxruntime import OnnxRuntimeEngine
from inspectd.imagefile import read_image
from inspectd.preprocess import PreprocessSpec, load_inputs
from inspectd.train.datasets.mvtec import MVTecSet
from inspectd.train.evaluate import evaluate
from inspectd.train.graph import InspectionGraph
from inspectd.train.loop import TrainSettings, split_indices, train_reconstruction
from inspectd.train.models.ae import ConvAutoencoder

log = structlog.get_logger(__name__)

PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class BuildRequest:
    product: str
    data: Path
    out: Path  # the bundle directory, products/<product>
    model: str = "ae"
    input_size: int = 128
    roi: tuple[int, int, int, int] | None = None
    latent_dim: int = 100
    settings: TrainSettings = TrainSettings()
    resume: bool = False


def build_model(req: BuildRequest) -> tuple[torch.nn.Module, dict[str, Any]]:
    if req.model == "ae":
        params = {"input_size": req.input_size, "latent_dim": req.latent_dim}
        return ConvAutoencoder(**params), params
    raise ValueError(f"model {req.model!r} is not available yet (allowed: ae)")


def data_digest(paths: list[Path], root: Path) -> tuple[str, list[str]]:
    """sha256 over (relative name, file sha256) of the training images, and the per-file lines."""
    lines = [f"{sha256_of(p)}  {p.relative_to(root).as_posix()}" for p in paths]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest(), lines


def build_product(req: BuildRequest) -> Path:
    t0 = time.monotonic()
    dataset = MVTecSet(req.data)
    good = [s.path for s in dataset.train_good()]
    # The camera that made the training images fixes the frame size: the daemon refuses frames
    # of another size (a wrong camera or ROI setting) instead of scoring them.
    sizes = {read_image(p).shape[:2] for p in good}
    spec = PreprocessSpec(
        size=(req.input_size, req.input_size),
        roi=req.roi,
        source_size=sizes.pop() if len(sizes) == 1 else None,
    )
    images = load_inputs(good, spec)
    train_idx, val_idx = split_indices(len(images), 0.2, req.settings.seed)
    log.info("train.data", images=len(images), train=len(train_idx), validation=len(val_idx))

    model, params = build_model(req)
    req.out.mkdir(parents=True, exist_ok=True)
    ckpt = req.out.parent / f".{req.product}.checkpoint.pt"
    if not req.resume and ckpt.exists():
        ckpt.unlink()
    result = train_reconstruction(
        model, images[train_idx], images[val_idx], req.settings, checkpoint=ckpt
    )
    log.info("train.done", epochs=result.epochs_run, best_epoch=result.best_epoch,
             best_val_loss=round(result.best_val_loss, 5), seconds=round(result.seconds, 1))

    model = model.cpu().eval()
    graph = InspectionGraph(model)
    onnx_path = export_onnx(graph, req.out / "model.onnx", spec.size)
    diff = parity(graph, onnx_path, images[val_idx][:8])
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: max map difference {diff:.2e}")
    model_sha = sha256_of(onnx_path)

    engine = OnnxRuntimeEngine(onnx_path)
    val = engine.infer(images[val_idx])
    thresholds = max_of_good(val.score, val.anomaly_map, model_sha)
    write_thresholds(req.out, thresholds)
    metrics = evaluate(engine, dataset, spec, thresholds.image) if dataset.test() else {}

    digest, lines = data_digest(good, req.data)
    (req.out / TRAIN_IMAGES).write_text("\n".join(lines) + "\n")
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "name": req.product,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "model": {"family": req.model, "file": "model.onnx", "opset": OPSET, "params": params},
        "preprocess": spec.model_dump(mode="json"),
        "scoring": {"method": "msgms_l2", "mean_filter": 21, "scales": 4, "c": 0.0026},
        "training": {
            "command": " ".join(shlex.quote(a) for a in ["inspectd", *sys.argv[1:]]),
            "data": req.data.name,
            "data_sha256": digest,
            "images": len(good),
            "train_split": len(train_idx),
            "validation_split": len(val_idx),
            "settings": asdict(req.settings),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_loss": round(result.best_val_loss, 6),
            "train_seconds": round(result.seconds, 1),
            "torch": str(torch.__version__),  # a TorchVersion, which YAML cannot write
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
            "onnx_parity_max_abs": float(f"{diff:.3g}"),
        },
        "metrics": metrics,
    }
    seal(req.out, manifest, ["model.onnx", THRESHOLDS, TRAIN_IMAGES])
    load_bundle(req.out)  # prove the bundle we wrote is one the daemon accepts
    log.info("bundle.written", path=str(req.out), seconds=round(time.monotonic() - t0, 1),
             **{k: v for k, v in metrics.items() if not isinstance(v, dict)})
    return req.out
