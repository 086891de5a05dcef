"""Inference backends, one module each; `load_engine` picks one and says why."""

from __future__ import annotations

from pathlib import Path

import structlog

from inspectd.engine.base import Engine, EngineError, InferenceResult

__all__ = ["Engine", "EngineError", "InferenceResult", "load_engine"]

log = structlog.get_logger(__name__)


def load_engine(model_path: Path, *, backend: str = "auto", device: str = "cpu", threads: int = 0) -> Engine:
    """Load the bundle's model with the configured backend.

    `auto` picks ONNX Runtime today; TensorRT joins when its backend lands (issue 8), chosen
    where it imports and a GPU is present.
    """
    if backend in ("auto", "onnxruntime"):
        from inspectd.engine.onnxruntime import OnnxRuntimeEngine

        why = "configured" if backend == "onnxruntime" else "auto: the only backend in this build"
        log.info("engine.chosen", backend="onnxruntime", device=device, why=why)
        return OnnxRuntimeEngine(model_path, device=device, threads=threads)
    raise EngineError(f"unknown engine backend {backend!r} (allowed: auto, onnxruntime)")
