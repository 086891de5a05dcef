"""The ``engine`` section: the inference runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inspectd.config.base import StrictModel


class EngineConfig(StrictModel):
    """The inference runtime."""

    backend: Literal["auto", "onnxruntime", "torch", "tensorrt"] = Field(
        "auto",
        description="Inference runtime; auto = TensorRT where it is installed and a CUDA GPU is "
        "present, else onnxruntime; torch runs the bundle's model.pt.",
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where the model runs (onnxruntime and torch; tensorrt is always cuda)."
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads for the runtime; 0 = all cores but one (capture and publishing "
        "get that one).",
    )
    max_batch: int = Field(1, ge=1, le=64, description="Most frames run through the model at once.")
    precision: Literal["fp16", "fp32"] = Field(
        "fp16",
        description="GPU precision: torch on cuda (fp16 autocast, scoring in fp32) and engines "
        "tensorrt rebuilds itself; CPU runs are fp32.",
    )
    cuda_graphs: bool = Field(
        True,
        description="Capture each batch size as a CUDA graph and replay it (torch on cuda, "
        "tensorrt); eager GPU runs are launch-bound.",
    )
