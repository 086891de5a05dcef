"""Export the inspection graph (normalise -> model -> scoring) to one ONNX file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectd.train.graph import INPUT_NAME, InferenceResult, InspectionGraph

# Opset 17 is inside what TensorRT 10's ONNX parser and ONNX Runtime >= 1.14 both accept, and
# has LayerNormalization for the ViT models.
OPSET = 17
OUTPUT_NAMES = list(InferenceResult._fields)
PARITY_TOLERANCE = 1e-4  # largest map difference between torch and an exported graph


def export_onnx(graph: InspectionGraph, path: Path, input_hw: tuple[int, int]) -> Path:
    """Write `graph` as a single-file ONNX model with a dynamic batch axis.

    The TorchScript exporter (dynamo=False) writes one self-contained file; the dynamo exporter
    would put the weights in a `.onnx.data` file beside it, and was slower in ONNX Runtime on
    the CPU for the hybrid model (design.md, measured facts).
    """
    graph = graph.eval()
    dummy = torch.zeros(1, *input_hw, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch_axis = {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream but is the one that writes one file.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=OUTPUT_NAMES,
            dynamic_axes={name: batch_axis for name in [INPUT_NAME, *OUTPUT_NAMES]},
        )
    return path


def parity(graph: InspectionGraph, onnx_path: Path, images: np.ndarray) -> float:
    """Largest absolute difference of the anomaly maps, torch vs ONNX Runtime, on `images`
    (uint8 N x H x W x 3). Verdict agreement is checked by the caller against its thresholds."""
    from inspectd.engine.onnxruntime import OnnxRuntimeEngine

    with torch.no_grad():
        want = graph.eval()(torch.from_numpy(images)).anomaly_map.numpy()
    got = OnnxRuntimeEngine(onnx_path).infer(images).anomaly_map
    return float(np.abs(want - got).max())


class ExportError(RuntimeError):
    """The bundle cannot be re-exported, or the new graph does not agree with the model."""


HALF_MIN_ELEMENTS = 1024  # smaller tensors (biases, norms) stay fp32: no size to gain, only error


def halve_weights(path: Path) -> None:
    """Store the large float32 weights of an ONNX file as float16, each followed by a Cast back
    to float32, so the file halves while every runtime still computes in fp32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < HALF_MIN_ELEMENTS:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))


def sample_frames(images: Path | None, spec: Any, n: int = 16) -> np.ndarray:
    """Preprocessed frames for a parity check: from `images` when given, else synthetic
    (noise and smooth gradients, enough to prove two graphs compute the same function)."""
    if images is not None:
        from inspectd.preprocess import load_inputs

        paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        if not paths:
            raise ExportError(f"{images}: no images (.png, .jpg, .bmp) for the parity check")
        return load_inputs(paths[:n], spec)
    h, w = spec.size
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (n // 2, h, w, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, None, :, None]
    smooth = np.broadcast_to(ramp * rng.uniform(0.2, 1.0, (n - n // 2, 1, 1, 3)), (n - n // 2, h, w, 3))
    return np.concatenate([noise, smooth.astype(np.uint8)])


def reexport(bundle_dir: Path, *, fp16_weights: bool = False, images: Path | None = None) -> str:
    """Write the bundle's model.onnx again from its model.pt and re-seal it; returns a summary.

    The new graph must match torch to PARITY_TOLERANCE. With fp16 weights it must also give
    the same verdict as the fp32 graph on every frame of `images` (required: verdicts on noise
    prove nothing); the thresholds are then re-bound to the new file, and the change is recorded.
    """
    import yaml

    from inspectd.bundle import MANIFEST, load_bundle, sha256_of
    from inspectd.deploy.bundle import replace_thresholds, seal
    from inspectd.engine.onnxruntime import OnnxRuntimeEngine
    from inspectd.train.models import load_graph

    bundle = load_bundle(bundle_dir)
    spec = bundle.manifest.preprocess
    model = bundle.manifest.model
    if model.checkpoint is None:
        raise ExportError(f"{bundle_dir}: the bundle has no trained weights (model.pt); retrain it "
                          "with inspectd train")
    if fp16_weights and images is None:
        raise ExportError("--fp16-weights needs --images DIR (good and defective frames) to check "
                          "that every verdict stays the same")
    frames = sample_frames(images, spec)
    graph = load_graph(bundle_dir / model.checkpoint, model.family, model.params)
    new = bundle_dir / (model.file + ".new")
    try:
        export_onnx(graph, new, spec.size)
        diff = parity(graph, new, frames)
        if diff > PARITY_TOLERANCE:
            raise ExportError(f"ONNX Runtime disagrees with torch: max map difference {diff:.2e}")
        notes = {"parity_max_abs": float(f"{diff:.3g}"), "fp16_weights": fp16_weights}
        if fp16_weights:
            reference = OnnxRuntimeEngine(new).infer(frames)
            halve_weights(new)
            half = OnnxRuntimeEngine(new).infer(frames)
            limit = bundle.thresholds.image
            changed = int(((reference.score >= limit) != (half.score >= limit)).sum())
            if changed:
                raise ExportError(f"fp16 weights change {changed} of {len(frames)} verdicts; keep "
                                  "fp32 weights")
            notes["fp16_max_map_change"] = float(f"{np.abs(reference.anomaly_map - half.anomaly_map).max():.3g}")
            notes["fp16_verdicts_checked"] = len(frames)
        old_sha, new_sha = bundle.model_sha256, sha256_of(new)
        if new_sha == old_sha:
            return f"{bundle_dir / model.file}: unchanged (parity {diff:.2e})"
        new.replace(bundle_dir / model.file)
    finally:
        new.unlink(missing_ok=True)
    manifest = yaml.safe_load((bundle_dir / MANIFEST).read_text())
    manifest["training"]["export"] = notes
    seal(bundle_dir, manifest, list(manifest["files"]))
    rebound = bundle.thresholds.model_copy(update={
        "model_sha256": new_sha,
        "method": bundle.thresholds.method.split(" (re-exported")[0] + f" (re-exported: {notes})",
    })  # fmt: skip
    replace_thresholds(bundle_dir, rebound)
    load_bundle(bundle_dir)
    size = (bundle_dir / model.file).stat().st_size / 1e6
    return f"{bundle_dir / model.file}: {size:.1f} MB, {notes}"
