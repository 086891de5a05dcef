"""Which backend `engine.backend: auto` runs, and why: a pure decision over gathered facts."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")


@dataclass(frozen=True)
class Facts:
    """What the machine and the bundle offer; gathered by `gather_facts`, injected in tests."""

    tensorrt: bool  # `import tensorrt` would work
    cuda_python: bool  # cuda-python is there (the TensorRT backend's device memory)
    gpu: str | None  # "NVIDIA H100 80GB HBM3 (sm90)", None without a usable CUDA GPU
    engine: str | None  # a bundle engine built for this GPU and TensorRT, by file name
    can_build: bool  # the TensorRT builder is installed and the bundle has its ONNX


@dataclass(frozen=True)
class Choice:
    backend: str
    why: str


def choose_backend(configured: str, facts: Facts) -> Choice:
    """`auto`: TensorRT where it imports, cuda-python and a GPU are there and an engine for this
    GPU exists or can be built; else ONNX Runtime. A configured backend is taken as it is (its
    loader then says what is missing)."""
    if configured not in BACKENDS:
        raise ValueError(f"unknown engine backend {configured!r} (allowed: {', '.join(BACKENDS)})")
    if configured != "auto":
        return Choice(configured, "configured")
    if not facts.tensorrt:
        return Choice("onnxruntime", "auto: TensorRT is not installed")
    if not facts.cuda_python:
        return Choice("onnxruntime", "auto: TensorRT is installed but cuda-python is not")
    if facts.gpu is None:
        return Choice("onnxruntime", "auto: TensorRT is installed but no CUDA GPU is visible")
    if facts.engine is not None:
        return Choice("tensorrt", f"auto: TensorRT with engine {facts.engine} on {facts.gpu}")
    if facts.can_build:
        return Choice(
            "tensorrt",
            f"auto: TensorRT on {facts.gpu}; no engine for this GPU yet, "
            "building one (minutes, once)",
        )
    return Choice(
        "onnxruntime",
        f"auto: no TensorRT engine for {facts.gpu} in the bundle and no "
        "TensorRT builder here (run inspectd build-engine)",
    )


def gather_facts(bundle: Any = None, state_dir: Path | None = None, max_batch: int = 1) -> Facts:
    """Look at this machine: cheap checks first, and TensorRT itself imported only where it and
    a GPU are both there (the daemon does not import runtimes it will not use)."""
    has_trt = importlib.util.find_spec("tensorrt") is not None
    try:
        has_cuda_python = importlib.util.find_spec("cuda") is not None
    except (ImportError, ValueError):
        has_cuda_python = False
    if not (has_trt and has_cuda_python):
        return Facts(has_trt, has_cuda_python, None, None, False)
    from inspectd.engine.base import EngineError
    from inspectd.engine.gpu import current_target
    from inspectd.engine.trt_files import engine_candidates, usable_engine

    try:
        target = current_target()
    except EngineError:
        return Facts(True, True, None, None, False)
    gpu = f"{target.gpu_name} (sm{target.compute_capability[0]}{target.compute_capability[1]})"
    engine, can_build = None, False
    if bundle is not None:
        from inspectd.engine.trt_build import builder_available

        candidates = engine_candidates(bundle.path, list(bundle.manifest.files), state_dir)
        try:
            found, _ = usable_engine(candidates, target, bundle.model_sha256, max_batch)
        except EngineError:
            found = None
        engine = found.name if found is not None else None
        can_build = state_dir is not None and bundle.model_path.is_file() and builder_available()
    return Facts(True, True, gpu, engine, can_build)
