"""PyTorch backend: the bundle's trained weights (model.pt) run by torch, on the CPU or a GPU.

The GPU path for boxes without TensorRT, and the one the GPU figures in docs/performance.md are
measured with. This is the only module of the daemon that imports torch and the training code
(the model registry), and only when `engine.backend: torch` is chosen.

On CUDA:
- fp16 through autocast around the reconstruction model only: the uint8 -> [0, 1]
  normalisation (in the graph's forward) and the scoring head (MSGMS with c = 0.0026, the 21x21
  mean filters, the likelihood interpolation) run in fp32, because the thresholds are compared
  with what the head computes and fp16 there moves scores by more than the models' own error;
  maps come back as float32.
- channels_last: the NHWC camera batch permuted to NCHW already has that memory layout, so the
  convolutions take it without a copy.
- CUDA graphs per batch size (optional, on by default): eager mode is launch-bound for these
  models (design.md: 4.6 ms eager vs 1.09 ms with a graph on an H100), so each batch size is
  captured once, from a static input buffer after warm-up runs on a side stream, and replayed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import structlog
import torch
from torch import nn

from inspectd.engine.base import Engine, EngineError, EngineUnavailable, InferenceResult

log = structlog.get_logger(__name__)

WARMUP_RUNS = 3  # before capture: cuDNN picks its algorithms and allocations settle


class _Autocast(nn.Module):
    """Runs the reconstruction model under fp16 autocast."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        with torch.autocast("cuda", dtype=torch.float16):
            return self.model(x)


class TorchEngine(Engine):
    name = "torch"

    def __init__(
        self,
        graph: nn.Module,
        input_hw: tuple[int, int],
        *,
        device: str = "cpu",
        precision: str = "fp16",
        cuda_graphs: bool = True,
        threads: int = 0,
        max_batch: int = 1,
    ) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable(
                "engine.device is cuda but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda})"
            )
        if precision not in ("fp16", "fp32"):
            raise EngineError(f"unknown precision {precision!r} (allowed: fp16, fp32)")
        self.input_hw = input_hw
        self.device = torch.device(device)
        self.max_batch = max_batch
        # fp16 and CUDA graphs are GPU techniques; on the CPU the engine runs the graph as
        # exported (fp32, eager), which is what makes it comparable with ONNX Runtime.
        on_gpu = self.device.type == "cuda"
        self.fp16 = on_gpu and precision == "fp16"
        self.cuda_graphs = on_gpu and cuda_graphs
        if not on_gpu:
            # cores-1 by default, like the ONNX Runtime backend: capture and publishing get one
            torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))
        graph = graph.eval().to(self.device)
        if on_gpu:
            # Module.to takes memory_format at run time; torch's overloads leave it out
            graph = graph.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.fp16:
            # the model only: the heads compute in fp32 themselves (inspectd.models.scoring);
            # an exported graph's model is a submodule (Module.__getattr__ says Tensor | Module)
            graph.model = _Autocast(cast(nn.Module, graph.model))
        self.graph = graph
        self._captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = {}
        self._pinned: dict[int, torch.Tensor] = {}
        log.info(
            "engine.loaded",
            backend=self.name,
            device=device,
            fp16=self.fp16,
            cuda_graphs=self.cuda_graphs,
            torch=torch.__version__,
        )

    # -- running -------------------------------------------------------------------------------

    def _host(self, batch: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(batch)
        if self.device.type != "cuda":
            return t
        pinned = self._pinned.get(batch.shape[0])
        if pinned is None:  # page-locked, so the copy to the GPU is asynchronous
            pinned = self._pinned[batch.shape[0]] = torch.empty(
                batch.shape, dtype=torch.uint8
            ).pin_memory()
        pinned.copy_(t)
        return pinned

    def _eager(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap, score = self.graph(x.to(self.device, non_blocking=True))
        return amap, score

    def _capture(self, n: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]:
        h, w = self.input_hw
        static_in = torch.zeros((n, h, w, 3), dtype=torch.uint8, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(WARMUP_RUNS):
                self.graph(static_in)
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_out = self.graph(static_in)
        log.info("engine.cuda_graph_captured", backend=self.name, batch=n)
        return cuda_graph, static_in, static_out

    def _replay(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        if n not in self._captured:
            self._captured[n] = self._capture(n)
        cuda_graph, static_in, static_out = self._captured[n]
        static_in.copy_(x, non_blocking=True)
        cuda_graph.replay()
        return static_out[0], static_out[1]

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> InferenceResult:
        self.check_batch(batch)
        maps, scores = [], []
        for i in range(0, batch.shape[0], self.max_batch):
            x = self._host(np.ascontiguousarray(batch[i : i + self.max_batch]))
            amap, score = self._replay(x) if self.cuda_graphs else self._eager(x)
            # .cpu() synchronises; .float() because fp16 paths may leave half tensors
            maps.append(amap.float().cpu().numpy())
            scores.append(score.float().cpu().numpy())
        return InferenceResult(np.concatenate(maps), np.concatenate(scores))

    def warmup(self, runs: int = 3) -> None:
        h, w = self.input_hw
        for n in sorted({1, self.max_batch}):  # on CUDA this captures both graphs up front
            for _ in range(runs):
                self.infer(np.zeros((n, h, w, 3), np.uint8))

    def close(self) -> None:
        self._captured.clear()
        self._pinned.clear()


def load_torch_engine(
    bundle: Any,
    *,
    device: str = "cpu",
    precision: str = "fp16",
    cuda_graphs: bool = True,
    threads: int = 0,
    max_batch: int = 1,
) -> TorchEngine:
    """The torch engine of a bundle: its model.pt through the model registry."""
    m = bundle.manifest.model
    if m.checkpoint is None:
        raise EngineError(
            f"{bundle.path}: this bundle has no trained weights (model.checkpoint is not set in "
            f"its manifest), which the torch engine needs; retrain with `inspectd train` or use "
            f"engine.backend onnxruntime"
        )
    from inspectd.models import load_graph

    checkpoint = Path(bundle.path) / m.checkpoint
    try:
        graph = load_graph(bundle)
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise EngineError(f"{checkpoint}: cannot load the {m.family} model: {exc}") from exc
    size = bundle.manifest.preprocess.size
    return TorchEngine(
        graph,
        (int(size[0]), int(size[1])),
        device=device,
        precision=precision,
        cuda_graphs=cuda_graphs,
        threads=threads,
        max_batch=max_batch,
    )
