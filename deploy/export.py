"""Export the inspection graph (normalise -> model -> scoring) to one ONNX file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from inspectd.train.graph import INPUT_NAME, InferenceResult, InspectionGraph

# Opset 17 is inside what TensorRT 10's ONNX parser and ONNX Runtime >= 1.14 both accept, and
# has LayerNormalization for the ViT models.
OPSET = 17
OUTPUT_NAMES = list(InferenceResult._fields)


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
