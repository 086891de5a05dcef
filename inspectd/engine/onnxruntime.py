"""ONNX Runtime backend: CPU everywhere, the CUDA provider where the wheel has it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import structlog

from inspectd.engine.base import Engine, EngineError, InferenceResult

log = structlog.get_logger(__name__)


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model_path: Path, *, device: str = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort  # lazy: the daemon imports only the runtime it uses

        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise EngineError(
                    f"engine.device is cuda but this onnxruntime has no CUDA provider "
                    f"(available: {', '.join(available)}); install onnxruntime-gpu or use cpu"
                )
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Capture, decoding and publishing run beside the engine: by default leave them a core,
        # and do not let idle pool threads spin on it (bench/latency.py: on 2 cores the daemon
        # reached 0.5-0.65 of the bare engine with ONNX Runtime's defaults, 0.79-0.93 so).
        opts.intra_op_num_threads = threads or max(1, (os.cpu_count() or 2) - 1)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"{model_path}: cannot load ONNX model: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape  # ['batch', H, W, 3]
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[3] != 3:
            raise EngineError(f"{model_path}: expected input N x H x W x 3, graph has {shape}")
        self.input_hw = (shape[1], shape[2])
        self.providers = self.session.get_providers()
        log.info(
            "engine.loaded", backend=self.name, providers=self.providers, model=str(model_path)
        )

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self.check_batch(batch)
        amap, score = self.session.run(None, {self.input_name: batch})
        return InferenceResult(amap, score)
