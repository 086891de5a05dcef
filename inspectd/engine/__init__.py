"""Inference backends, one module each; `load_engine` picks one and says why.

Each backend's runtime (onnxruntime, torch, tensorrt) is imported only when that backend is
chosen, so the daemon never imports torch unless `engine.backend: torch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from inspectd.engine.base import Engine, EngineError, EngineUnavailable, InferenceResult

__all__ = ["Engine", "EngineError", "EngineUnavailable", "InferenceResult", "load_engine"]

log = structlog.get_logger(__name__)


def load_engine(
    model_path: Path,
    *,
    backend: str = "auto",
    device: str = "cpu",
    threads: int = 0,
    bundle: Any = None,
    max_batch: int = 1,
    precision: str = "fp16",
    cuda_graphs: bool = True,
    state_dir: Path | None = None,
) -> Engine:
    """Load the bundle's model with the configured backend.

    `auto` is TensorRT where it imports and a GPU is present (and an engine for this GPU is in
    the bundle or can be built), else ONNX Runtime (see inspectd.engine.selection). The torch and
    TensorRT backends need `bundle` (the weights, the engines); `state_dir` is where TensorRT
    keeps engines it rebuilt and its timing cache.
    """
    from inspectd.engine.selection import BACKENDS, Choice, choose_backend, gather_facts

    if backend not in BACKENDS:
        raise EngineError(f"unknown engine backend {backend!r} (allowed: {', '.join(BACKENDS)})")
    if backend == "auto" and bundle is None:
        choice = Choice("onnxruntime", "auto: no bundle given, only the ONNX graph")
    else:
        facts = gather_facts(bundle, state_dir, max_batch) if backend == "auto" else None
        choice = choose_backend(backend, facts)  # type: ignore[arg-type]
    if choice.backend != "onnxruntime" and bundle is None:
        raise EngineError(f"the {choice.backend} backend needs the bundle, not only {model_path}")
    log.info("engine.chosen", backend=choice.backend, device=device, why=choice.why)
    if choice.backend == "torch":
        from inspectd.engine.torch import load_torch_engine

        return load_torch_engine(
            bundle,
            device=device,
            precision=precision,
            cuda_graphs=cuda_graphs,
            threads=threads,
            max_batch=max_batch,
        )
    if choice.backend == "tensorrt":
        from inspectd.engine.tensorrt import load_tensorrt_engine

        return load_tensorrt_engine(
            bundle,
            max_batch=max_batch,
            state_dir=state_dir,
            precision=precision,
            cuda_graphs=cuda_graphs,
        )
    from inspectd.engine.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(model_path, device=device, threads=threads)
