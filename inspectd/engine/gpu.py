"""This machine's GPU and TensorRT, through cuda-python's runtime bindings (no pycuda):
`cuda.bindings.runtime` (cuda-python >= 12.6), else the older `cuda.cudart`. Both are imported
only when called. Shared by the TensorRT backend and the engine builder."""

from __future__ import annotations

from typing import Any

from inspectd.engine.base import EngineError, EngineUnavailable
from inspectd.engine.trt_files import Target


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


def checked(rt: Any, result: Any) -> Any:
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
    props = checked(rt, rt.cudaGetDeviceProperties(0))
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
