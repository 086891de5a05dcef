"""TensorRT backend: run a serialized engine built on this GPU by `inspectd build-engine`.

A TensorRT engine is only valid for the GPU model (compute capability) and the TensorRT
version it was built with, and for the ONNX graph it was built from. So every engine carries
that in its file name, `model.<gpu-slug>-sm<cc>-trt<version>.engine`, and in a JSON sidecar
(`<engine>.json`: the ONNX sha256, precision, batch range), and loading checks both against
the running GPU and TensorRT before deserialising: a mismatch is rebuilt (where the builder is
installed and the bundle has its ONNX) or refused with a message that says what to run.

The pure functions at the top (naming, slugs, cache keys, compatibility) need neither TensorRT
nor a GPU; `tensorrt` and cuda-python are imported only when an engine is loaded. Device memory,
pinned host buffers, the stream and CUDA graphs go through cuda-python's runtime bindings
(no pycuda): `cuda.bindings.runtime` (cuda-python >= 12.6), else the older `cuda.cudart`.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from inspectd.engine.base import Engine, EngineError, EngineUnavailable, InferenceResult

log = structlog.get_logger(__name__)

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"  # engine file name + ".json"
ENGINE_SCHEMA = "inspectd.trt-engine/1"
_NAME = re.compile(
    r"^(?P<stem>[^.]+)\.(?P<gpu>[a-z0-9]+(?:-[a-z0-9]+)*?)-sm(?P<cc>\d+)-trt(?P<trt>\d+(?:\.\d+)*)"
    + re.escape(ENGINE_SUFFIX) + "$"
)  # fmt: skip


# -- pure functions: naming, compatibility, cache keys ----------------------------------------


@dataclass(frozen=True)
class Target:
    """What an engine is bound to: the GPU model, its compute capability and TensorRT's version."""

    gpu_name: str  # as CUDA reports it, e.g. "NVIDIA H100 80GB HBM3", "Orin (nvgpu)"
    compute_capability: tuple[int, int]
    trt_version: str  # e.g. "10.3.0" (TensorRT's own __version__, maybe with a 4th part)

    @property
    def tag(self) -> str:
        """`<gpu-slug>-sm<cc>-trt<major.minor.patch>`: the part of the engine name that binds it."""
        major, minor = self.compute_capability
        return f"{gpu_slug(self.gpu_name)}-sm{major}{minor}-trt{short_version(self.trt_version)}"


def gpu_slug(name: str) -> str:
    """A GPU name as a file-name part: lower case, runs of anything else than [a-z0-9] -> '-'.
    "NVIDIA GeForce RTX 4090" -> "nvidia-geforce-rtx-4090"; "Orin (nvgpu)" -> "orin-nvgpu"."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"GPU name {name!r} has no letters or digits to name an engine by")
    return slug


def short_version(version: str) -> str:
    """major.minor.patch of a TensorRT version ("10.3.0.26" -> "10.3.0"). Engines are tied to
    the exact TensorRT release; the 4th (build) part does not appear in released wheels' names."""
    parts = re.findall(r"\d+", version)
    if not parts:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return ".".join((parts + ["0", "0"])[:3])


def engine_file_name(target: Target, onnx_file: str = "model.onnx") -> str:
    """`model.<gpu-slug>-sm<cc>-trt<version>.engine`, named after the ONNX file it was built from."""
    return f"{Path(onnx_file).stem}.{target.tag}{ENGINE_SUFFIX}"


@dataclass(frozen=True)
class EngineName:
    stem: str
    gpu: str  # slug
    sm: str  # "90", "87"
    trt: str  # "10.3.0"


def parse_engine_file_name(name: str) -> EngineName | None:
    """The parts of an engine file name, or None for a name that is not one of ours."""
    m = _NAME.match(name)
    if m is None:
        return None
    return EngineName(m["stem"], m["gpu"], m["cc"], m["trt"])


def mismatches(name: str, target: Target) -> list[str]:
    """Why the engine `name` cannot run on `target` (empty: it can), in words for the log."""
    parsed = parse_engine_file_name(name)
    if parsed is None:
        return [f"{name} is not named model.<gpu>-sm<cc>-trt<version>.engine"]
    want = parse_engine_file_name(engine_file_name(target, f"{parsed.stem}.onnx"))
    assert want is not None
    out = []
    if parsed.gpu != want.gpu:
        out.append(f"built for GPU {parsed.gpu}, this is {want.gpu}")
    if parsed.sm != want.sm:
        out.append(f"built for compute capability sm{parsed.sm}, this GPU is sm{want.sm}")
    if parsed.trt != want.trt:
        out.append(f"built with TensorRT {parsed.trt}, this is TensorRT {want.trt}")
    return out


@dataclass(frozen=True)
class EngineInfo:
    """The sidecar written beside every engine: what it was built from and for."""

    onnx_sha256: str
    precision: str  # fp32 | fp16 | int8
    batch_min: int
    batch_opt: int
    batch_max: int
    gpu_name: str
    compute_capability: str  # "9.0"
    trt_version: str
    built: str  # UTC ISO 8601
    schema: str = ENGINE_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def read(cls, path: Path) -> EngineInfo:
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != ENGINE_SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {ENGINE_SCHEMA!r}")
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise EngineError(f"{path}: unreadable engine description: {exc}") from exc


def sidecar_of(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def cache_key(onnx_sha256: str, target: Target, precision: str, batch_max: int) -> str:
    """Name of an engine built by the daemon itself into the state directory: everything that
    makes two engines differ goes into it, so a retrained model or a new TensorRT never picks
    up a stale one."""
    h = hashlib.sha256(f"{onnx_sha256}|{precision}|{batch_max}".encode()).hexdigest()[:16]
    return f"model-{h}.{target.tag}{ENGINE_SUFFIX}"


def timing_cache_name(target: Target) -> str:
    """Timing caches are per GPU model and TensorRT version (the builder ignores foreign ones
    only when told to; we keep them apart instead)."""
    return f"timing.{target.tag}.cache"


def usable_engine(
    candidates: list[Path], target: Target, onnx_sha256: str, batch: int
) -> tuple[Path | None, list[str]]:
    """The first engine in `candidates` built for this target, from this ONNX, taking `batch`;
    and why each other one was passed over."""
    why_not: list[str] = []
    for path in candidates:
        reasons = mismatches(path.name, target)
        if not reasons:
            side = sidecar_of(path)
            if not side.is_file():
                reasons = [f"no {side.name} beside it (rebuild with inspectd build-engine)"]
            else:
                info = EngineInfo.read(side)
                if info.onnx_sha256 != onnx_sha256:
                    reasons = ["built from another model.onnx (the model was retrained or re-exported)"]
                elif info.batch_max < batch:
                    reasons = [f"takes batches up to {info.batch_max}, engine.max_batch is {batch}"]
        if not reasons:
            return path, why_not
        why_not.append(f"{path.name}: " + "; ".join(reasons))
    return None, why_not


# -- CUDA through cuda-python ------------------------------------------------------------------


def cudart() -> Any:
    """cuda-python's runtime module, whichever layout is installed."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # older cuda-python

        return runtime
    except ImportError as exc:
        raise EngineUnavailable(
            "the TensorRT backend needs cuda-python (pip install cuda-python matching the CUDA "
            "version; on a Jetson the JetPack CUDA)"
        ) from exc


def _ok(rt: Any, result: Any) -> Any:
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        raise EngineError(f"CUDA: {err.name if hasattr(err, 'name') else err}: {text!r}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def current_target(trt_version: str | None = None) -> Target:
    """This machine's GPU 0 and TensorRT; EngineUnavailable where there is none."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()  # no driver or no GPU is an error code, not a crash
    if err != rt.cudaError_t.cudaSuccess or not count:
        raise EngineUnavailable(f"no CUDA GPU is visible (cudaGetDeviceCount: {err}, {count})")
    props = _ok(rt, rt.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    name = name.rstrip("\x00")
    if trt_version is None:
        trt_version = import_tensorrt().__version__
    return Target(name, (int(props.major), int(props.minor)), trt_version)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineUnavailable(
            "TensorRT is not installed for this Python (on a Jetson: JetPack's python3-libnvinfer "
            "and a venv made with --system-site-packages; elsewhere the tensorrt wheel)"
        ) from exc
    return trt


class _Pinned:
    """Page-locked host memory seen as a numpy array (fast, async copies)."""

    def __init__(self, rt: Any, nbytes: int) -> None:
        self.rt = rt
        self.ptr = _ok(rt, rt.cudaMallocHost(nbytes))
        self.nbytes = nbytes
        buf = (ctypes.c_uint8 * nbytes).from_address(int(self.ptr))
        self.array = np.frombuffer(buf, np.uint8)

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
            raise EngineError(f"{engine_path}: TensorRT could not deserialise the engine (see the "
                              f"TensorRT log above); rebuild it with inspectd build-engine")  # fmt: skip
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
        self._stream = _ok(rt, rt.cudaStreamCreate())
        # Output shapes at the largest batch size size the buffers.
        self.context.set_input_shape(self.input_name, (self.max_batch, *self.input_hw, 3))
        for name in [self.input_name, *self.output_names]:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            device = _ok(rt, rt.cudaMalloc(nbytes))
            self._tensors.append(_Tensor(name, dtype, shape, device, _Pinned(rt, nbytes)))
            self.context.set_tensor_address(name, int(device))
        self._batch = self.max_batch  # the input shape the context is set to
        log.info("engine.loaded", backend=self.name, engine=str(engine_path),
                 max_batch=self.max_batch, cuda_graphs=cuda_graphs)  # fmt: skip

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
            _ok(rt, rt.cudaStreamSynchronize(self._stream))
            mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _ok(rt, rt.cudaStreamBeginCapture(self._stream, mode))
            self.context.execute_async_v3(self._stream)
            captured = _ok(rt, rt.cudaStreamEndCapture(self._stream))
            graph = _ok(rt, rt.cudaGraphInstantiate(captured, 0))
            self._graphs[n] = graph
            log.info("engine.cuda_graph_captured", backend=self.name, batch=n)
        _ok(rt, rt.cudaGraphLaunch(graph, self._stream))

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        rt, n = self.rt, batch.shape[0]
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._set_batch(n)
        inp = self._tensors[0]
        np.copyto(inp.host_view(batch.shape), batch)
        _ok(rt, rt.cudaMemcpyAsync(inp.device, inp.host.ptr, batch.nbytes, h2d, self._stream))
        self._enqueue(n)
        outs = []
        for t in self._tensors[1:]:
            shape = (n, *t.shape_max[1:])
            nbytes = int(np.prod(shape)) * t.dtype.itemsize
            _ok(rt, rt.cudaMemcpyAsync(t.host.ptr, t.device, nbytes, d2h, self._stream))
            outs.append(shape)
        _ok(rt, rt.cudaStreamSynchronize(self._stream))
        # copies: the pinned buffers are overwritten by the next batch
        return [t.host_view(s).astype(np.float32) for t, s in zip(self._tensors[1:], outs, strict=True)]

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self.check_batch(batch)
        maps, scores = [], []
        for i in range(0, batch.shape[0], self.max_batch):
            got = dict(zip(self.output_names, self._run(np.ascontiguousarray(batch[i : i + self.max_batch])), strict=True))
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


def engine_candidates(bundle_dir: Path, listed: list[str], state_dir: Path | None) -> list[Path]:
    """Engines the bundle lists (sealed by build-engine), then engines the daemon built itself
    into <state_dir>/engines."""
    found = [bundle_dir / f for f in sorted(listed) if f.endswith(ENGINE_SUFFIX)]
    if state_dir is not None and (state_dir / "engines").is_dir():
        found += sorted((state_dir / "engines").glob("*" + ENGINE_SUFFIX))
    return found


def load_tensorrt_engine(bundle: Any, *, max_batch: int = 1, state_dir: Path | None = None,
                         precision: str = "fp16", cuda_graphs: bool = True) -> TensorRTEngine:  # fmt: skip
    """The engine for this GPU and TensorRT from the bundle (or the state directory); built
    into <state_dir>/engines where none fits and the builder is installed; refused otherwise."""
    target = current_target()
    onnx_sha = bundle.model_sha256
    candidates = engine_candidates(bundle.path, list(bundle.manifest.files), state_dir)
    path, why_not = usable_engine(candidates, target, onnx_sha, max_batch)
    if path is None:
        from inspectd.deploy.tensorrt import BuildError, build_engine, builder_available

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
            path = build_engine(bundle.path, precision=precision, batch=max_batch, out=out,
                                state_dir=state_dir, seal_into_bundle=False)  # fmt: skip
        except BuildError as exc:
            raise EngineError(f"{bundle.path}: rebuilding the TensorRT engine failed: {exc}") from exc
    return TensorRTEngine(path, max_batch=max_batch, cuda_graphs=cuda_graphs)
