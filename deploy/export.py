"""Export the inspection graph (normalise -> model -> scoring) to one ONNX file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from inspectd.engine.base import InferenceResult
from inspectd.models.graph import INPUT_NAME, InspectionGraph

# Opset 17 is inside what TensorRT 10's ONNX parser and ONNX Runtime >= 1.14 both accept, and
# has LayerNormalization for the ViT models.
OPSET = 17
OUTPUT_NAMES = list(InferenceResult._fields)
# largest map difference between torch and an exported graph, in units of the map's scale
# (the larger of 1 and its peak value; see parity)
PARITY_TOLERANCE = 1e-4


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


def torch_results(graph: InspectionGraph, images: np.ndarray) -> InferenceResult:
    """The graph's maps and scores on `images` (uint8 N x H x W x 3), as numpy arrays."""
    from inspectd.deploy.parity import BATCH

    graph = graph.eval()
    with torch.no_grad():  # in batches: the hybrid's attention maps are large at 224 px
        outs = [
            graph(torch.from_numpy(images[i : i + BATCH])) for i in range(0, len(images), BATCH)
        ]
    return InferenceResult(
        np.concatenate([o.anomaly_map.numpy() for o in outs]),
        np.concatenate([o.score.numpy() for o in outs]),
    )


def parity(graph: InspectionGraph, onnx_path: Path, images: np.ndarray) -> float:
    """Largest difference of the anomaly maps, torch vs ONNX Runtime, on `images` (uint8
    N x H x W x 3), divided by the larger of 1 and the maps' peak: an absolute difference for
    maps within [0, 1] (the reconstruction families), a relative one for maps in feature-distance
    units (patchcore: values of 10-50, where two runtimes' fp32 backbones differ by ~1e-5 of
    them). Verdict agreement is checked by the caller against its thresholds."""
    from inspectd.deploy.parity import run_all
    from inspectd.engine.onnxruntime import OnnxRuntimeEngine

    want = torch_results(graph, images).anomaly_map
    got = run_all(OnnxRuntimeEngine(onnx_path), images).anomaly_map
    return float(np.abs(want - got).max() / max(1.0, float(np.abs(want).max())))


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
        half = numpy_helper.from_array(
            numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16"
        )
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))


def round_to_half(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Round the weights halve_weights stores as fp16 (float32, HALF_MIN_ELEMENTS or more) to
    fp16 values in place, and return the state dict with those tensors in fp16: model.pt then
    holds the weights model.onnx holds, so the torch engine gives the maps its thresholds were
    set on (fp16 values load back into the fp32 parameters)."""
    state = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype == torch.float32 and tensor.numel() >= HALF_MIN_ELEMENTS:
                tensor.copy_(tensor.half())
                tensor = tensor.half()
            state[name] = tensor
    return state


def reexport(bundle_dir: Path, *, fp16_weights: bool = False, images: Path | None = None) -> str:
    """Write the bundle's model.onnx again from its model.pt and re-seal it; returns a summary.

    The new graph must match torch to PARITY_TOLERANCE on `images` (default: rendered buttons,
    as verify-engine). With fp16 weights it must also give the same verdict as the fp32 graph on
    every image of `images`, which is then required (the product's own parts, good and
    defective), and model.pt is rewritten with the same rounded weights; the thresholds are
    re-bound to the new file and the change is recorded.
    """
    import yaml

    from inspectd.bundle import MANIFEST, load_bundle, sha256_of
    from inspectd.bundle_seal import replace_thresholds, seal
    from inspectd.deploy.parity import compare, format_comparison, run_all, sample_images
    from inspectd.engine.onnxruntime import OnnxRuntimeEngine
    from inspectd.models import load_graph
    from inspectd.versions.layout import has_versions

    bundle = load_bundle(bundle_dir)
    if has_versions(bundle_dir):
        # export rewrites the bundle in place: only the bundle as built, before any version
        raise ExportError(
            f"{bundle_dir} has versions (inspectd versions --product {bundle.name}): export "
            "rewrites a bundle as built, before it is calibrated into versions"
        )
    spec = bundle.manifest.preprocess
    model = bundle.manifest.model
    if model.checkpoint is None:
        raise ExportError(
            f"{bundle_dir}: the bundle has no trained weights (model.pt); retrain it "
            "with inspectd train"
        )
    if fp16_weights and images is None:
        raise ExportError(
            "--fp16-weights needs --images DIR (good and defective frames) to check "
            "that every verdict stays the same"
        )
    try:
        names, frames = sample_images(bundle, images)
    except FileNotFoundError as exc:
        raise ExportError(str(exc)) from exc
    graph = load_graph(bundle)
    if fp16_weights:
        reference = torch_results(graph, frames)  # the verdicts the rounded weights must keep
        half_state = round_to_half(graph.model)
    new = bundle_dir / (model.file + ".new")
    new_checkpoint = bundle_dir / (model.checkpoint + ".new")
    try:
        export_onnx(graph, new, spec.size)
        diff = parity(graph, new, frames)
        if diff > PARITY_TOLERANCE:
            raise ExportError(f"ONNX Runtime disagrees with torch: max map difference {diff:.2e}")
        notes = {"parity_max": float(f"{diff:.3g}"), "fp16_weights": fp16_weights}
        if fp16_weights:
            halve_weights(new)  # storage only: those weights hold fp16 values already
            half = compare(
                reference, run_all(OnnxRuntimeEngine(new), frames), names, bundle.thresholds.image
            )
            if not half.agree:
                raise ExportError(format_comparison(half, "fp16 weights") + "\nkeep fp32 weights")
            notes["fp16_max_map_change"] = float(f"{half.max_map_diff:.3g}")
            notes["fp16_verdicts_checked"] = half.n
        old_sha, new_sha = bundle.model_sha256, sha256_of(new)
        if new_sha == old_sha:
            return f"{bundle_dir / model.file}: unchanged (parity {diff:.2e})"
        new.replace(bundle_dir / model.file)
        if fp16_weights:
            torch.save(half_state, new_checkpoint)
            new_checkpoint.replace(bundle_dir / model.checkpoint)
    finally:
        new.unlink(missing_ok=True)
        new_checkpoint.unlink(missing_ok=True)
    manifest = yaml.safe_load((bundle_dir / MANIFEST).read_text())
    manifest["training"]["export"] = notes
    seal(bundle_dir, manifest, list(manifest["files"]))
    rebound = bundle.thresholds.model_copy(
        update={
            "model_sha256": new_sha,
            "method": bundle.thresholds.method.split(" (re-exported")[0]
            + f" (re-exported: {notes})",
        }
    )
    replace_thresholds(bundle_dir, rebound)
    load_bundle(bundle_dir)
    size = (bundle_dir / model.file).stat().st_size / 1e6
    return f"{bundle_dir / model.file}: {size:.1f} MB, {notes}"
