"""TensorRT backend: run a serialized engine built on this GPU by `inspectd build-engine`.

Before deserialising, the engine's name and sidecar are checked against the running GPU and
TensorRT and the bundle's ONNX (inspectd.engine.trt_files): a mismatch is rebuilt (where the
builder is installed and the bundle has its ONNX) or refused with a message that says what to
run. `tensorrt` and cuda-python are imported only when an engine is loaded
(inspectd.engine.gpu). Device memory, pinned host buffers, the stream and CUDA graphs go
through cuda-python's runtime bindings.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from inspectd.engine.base import Engine, EngineError, EngineUnavailable, InferenceResult
from inspectd.engine.gpu import checked, cudart, current_target, import_tensorrt
from inspectd.engine.trt_files import cache_key, engine_candidates, usable_engine

log = structlog.get_logger(__name__)


class _Pinned:
    """Page-locked host memory seen as a numpy array (fast, async copies)."""

    def __init__(self, rt: Any, nbytes: int) -> None:
        self.rt = rt
        self.ptr = checked(rt, rt.cudaMallocHost(nbytes))
        self.nbytes = nbytes
        buf = (ctypes.c_uint8 * nbytes).from_address(int(self.ptr))
        # a ctypes array is a buffer; numpy's stubs (before Python 3.12's Buffer) do not say so
        self.array = np.frombuffer(buf, np.uint8)  # type: ignore[call-overload]

    def free(self) -> None:
        if self.ptr is not None:
            self.rt.cudaFreeHost(self.ptr)
            self.ptr = None


@dataclass
class _Tensor:
    name: str
    dtype: np.dtype
    shape_max: tuple[int, ...]  # at batch_max
    device: int
    host: _Pinned

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * self.dtype.itemsize
        return self.host.array[:n].view(self.dtype).reshape(shape)


class TensorRTEngine(Engine):
    """Runs a serialized TensorRT engine on GPU 0 with one CUDA stream.

    Buffers (device, and pinned host) are allocated once for the largest batch; inputs and
    outputs are bound by name. With `cuda_graphs` the enqueue of each batch size is captured
    once and then replayed: for models of this size launch overhead dominates eager execution
    (design.md, measured facts), and a graph launch is one call.
    """

    name = "tensorrt"

    def __init__(self, engine_path: Path, *, max_batch: int = 1, cuda_graphs: bool = True) -> None:
        trt = import_tensorrt()
        rt = cudart()
        self.rt, self.trt = rt, trt
        self.path = engine_path
        self._graphs: dict[int, Any] = {}
        self._tensors: list[_Tensor] = []
        self._stream = None
        self.cuda_graphs = cuda_graphs
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)  # must outlive the engine
        engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise EngineError(
                f"{engine_path}: TensorRT could not deserialise the engine (see the "
                f"TensorRT log above); rebuild it with inspectd build-engine"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise EngineError(f"{engine_path}: expected one input tensor, the engine has {inputs}")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]
        in_shape = tuple(engine.get_tensor_shape(self.input_name))  # (-1, H, W, 3)
        if len(in_shape) != 4 or in_shape[3] != 3:
            raise EngineError(f"{engine_path}: expected input N x H x W x 3, engine has {in_shape}")
        self.input_hw = (int(in_shape[1]), int(in_shape[2]))
        _, _, profile_max = engine.get_tensor_profile_shape(self.input_name, 0)
        self.max_batch = min(max_batch, int(profile_max[0]))
        self._stream = checked(rt, rt.cudaStreamCreate())
        # Output shapes at the largest batch size size the buffers.
        self.context.set_input_shape(self.input_name, (self.max_batch, *self.input_hw, 3))
        for name in [self.input_name, *self.output_names]:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            device = checked(rt, rt.cudaMalloc(nbytes))
            self._tensors.append(_Tensor(name, dtype, shape, device, _Pinned(rt, nbytes)))
            self.context.set_tensor_address(name, int(device))
        self._batch = self.max_batch  # the input shape the context is set to
        log.info(
            "engine.loaded",
            backend=self.name,
            engine=str(engine_path),
            max_batch=self.max_batch,
            cuda_graphs=cuda_graphs,
        )

    def _set_batch(self, n: int) -> None:
        if n != self._batch:
            self.context.set_input_shape(self.input_name, (n, *self.input_hw, 3))
            self._batch = n

    def _enqueue(self, n: int) -> None:
        rt = self.rt
        if not self.cuda_graphs:
            if not self.context.execute_async_v3(self._stream):
                raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            return
        graph = self._graphs.get(n)
        if graph is None:
            # One plain run first: TensorRT does deferred work after a shape change that must
            # not land in the capture.
            if not self.context.execute_async_v3(self._stream):
                raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            checked(rt, rt.cudaStreamSynchronize(self._stream))
            mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            checked(rt, rt.cudaStreamBeginCapture(self._stream, mode))
            self.context.execute_async_v3(self._stream)
            captured = checked(rt, rt.cudaStreamEndCapture(self._stream))
            graph = checked(rt, rt.cudaGraphInstantiate(captured, 0))
            self._graphs[n] = graph
            log.info("engine.cuda_graph_captured", backend=self.name, batch=n)
        checked(rt, rt.cudaGraphLaunch(graph, self._stream))

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        rt, n = self.rt, batch.shape[0]
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._set_batch(n)
        inp = self._tensors[0]
        np.copyto(inp.host_view(batch.shape), batch)
        checked(rt, rt.cudaMemcpyAsync(inp.device, inp.host.ptr, batch.nbytes, h2d, self._stream))
        self._enqueue(n)
        outs = []
        for t in self._tensors[1:]:
            shape = (n, *t.shape_max[1:])
            nbytes = int(np.prod(shape)) * t.dtype.itemsize
            checked(rt, rt.cudaMemcpyAsync(t.host.ptr, t.device, nbytes, d2h, self._stream))
            outs.append(shape)
        checked(rt, rt.cudaStreamSynchronize(self._stream))
        # copies: the pinned buffers are overwritten by the next batch
        return [
            t.host_view(s).astype(np.float32) for t, s in zip(self._tensors[1:], outs, strict=True)
        ]

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self.check_batch(batch)
        maps, scores = [], []
        for i in range(0, batch.shape[0], self.max_batch):
            got = dict(
                zip(
                    self.output_names,
                    self._run(np.ascontiguousarray(batch[i : i + self.max_batch])),
                    strict=True,
                )
            )
            maps.append(got["anomaly_map"])
            scores.append(got["score"])
        return InferenceResult(np.concatenate(maps), np.concatenate(scores))

    def warmup(self, runs: int = 3) -> None:
        h, w = self.input_hw
        for n in sorted({1, self.max_batch}):  # captures both graphs before the first part
            for _ in range(runs):
                self.infer(np.zeros((n, h, w, 3), np.uint8))

    def close(self) -> None:
        rt = self.rt
        for t in self._tensors:
            rt.cudaFree(t.device)
            t.host.free()
        self._tensors = []
        for g in self._graphs.values():
            rt.cudaGraphExecDestroy(g)
        self._graphs = {}
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None


def load_tensorrt_engine(
    bundle: Any,
    *,
    max_batch: int = 1,
    state_dir: Path | None = None,
    precision: str = "fp16",
    cuda_graphs: bool = True,
) -> TensorRTEngine:
    """The engine for this GPU and TensorRT from the bundle (or the state directory); built
    into <state_dir>/engines where none fits and the builder is installed; refused otherwise."""
    target = current_target()
    onnx_sha = bundle.model_sha256
    candidates = engine_candidates(bundle.path, list(bundle.manifest.files), state_dir)
    path, why_not = usable_engine(candidates, target, onnx_sha, max_batch)
    if path is None:
        from inspectd.engine.trt_build import BuildError, build_engine, builder_available

        detail = ("; ".join(why_not)) if why_not else "the bundle has no TensorRT engine"
        if not builder_available() or state_dir is None or not bundle.model_path.is_file():
            raise EngineUnavailable(
                f"{bundle.path}: no TensorRT engine for this GPU ({target.tag}): {detail}. Run "
                f"`inspectd build-engine --product {bundle.name}` on this machine, or use "
                f"engine.backend onnxruntime or torch"
            )
        log.warning("engine.rebuilding", backend="tensorrt", target=target.tag, why=detail)
        out = state_dir / "engines" / cache_key(onnx_sha, target, precision, max_batch)
        try:
            path = build_engine(
                bundle.product_dir,
                version=bundle.version,
                precision=precision,
                batch=max_batch,
                out=out,
                state_dir=state_dir,
                seal_into_bundle=False,
            )
        except BuildError as exc:
            raise EngineError(
                f"{bundle.path}: rebuilding the TensorRT engine failed: {exc}"
            ) from exc
    return TensorRTEngine(path, max_batch=max_batch, cuda_graphs=cuda_graphs)
