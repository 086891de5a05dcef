"""Build a TensorRT engine from a bundle's ONNX graph, on the machine that will run it.

    inspectd build-engine --product button [--precision fp16|int8|fp32] [--batch N]
                          [--calib-images DIR]

TensorRT 10 and 11 Python API: `trt.Builder`, the network from `trt.OnnxParser` (its errors
reported node by node), a `BuilderConfig` with a workspace memory-pool limit and the precision,
one optimisation profile for the dynamic batch axis (min 1, opt = max = N: the daemon runs
batches of up to engine.max_batch and mostly full ones under load), a timing cache kept in the
state directory so rebuilds after a model update take seconds instead of minutes, and an
`IProgressMonitor` that prints the build phases.

The result is `model.<gpu-slug>-sm<cc>-trt<version>.engine` beside model.onnx with a JSON
sidecar (ONNX sha256, precision, batch range), both recorded with their sha256 in the manifest
(re-sealed, as calibrate does), so `load_bundle` verifies them like every other file.

Precision
---------
fp32 and fp16: TensorRT 10 takes BuilderFlag.FP16 and picks fp16 kernels where faster; the
exported graph's I/O stays uint8 in / float32 out. TensorRT 11 removed the precision flags
(networks are strongly typed: the ONNX's own types are used), so there fp16 needs an ONNX
converted by ModelOpt AutoCast and we refuse `--precision fp16` with that message.

INT8: *implicit quantisation with a calibrator* (IInt8EntropyCalibrator2 over good parts, with
a calibration cache in the state directory). Why this and not explicit quantisation (Q/DQ):
the exported graph has no Q/DQ nodes, and inserting them needs NVIDIA ModelOpt and a
quantisation-aware export, i.e. torch and the training code on the box; the calibrator needs
only good images, which every station has. The cost: implicit INT8 is deprecated since
TensorRT 10.1 and removed in 11, so on TensorRT >= 11 `--precision int8` is refused with a
message pointing at explicit quantisation. Entropy calibration (not min-max) because anomaly
maps are judged in their tails, where clipping a few outlier activations costs less than the
coarser steps min-max scaling gives the bulk.

What stays fp32 in an fp16 or INT8 build (`keeps_fp32`, with OBEY_PRECISION_CONSTRAINTS), as in
the torch engine: every family's scoring head (MSGMS with c = 0.0026 and the mean filters; the
thresholds are compared with what it computes) and patchcore's memory search (|m|^2 of a few
hundred leaves fp16 no digits to tell the nearest memory patch from the next). `inspectd
verify-engine` (run after every build) compares the engine with ONNX Runtime and says loudly
when any verdict differs.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from inspectd.bundle import MANIFEST, load_bundle, load_bundle_folder, sha256_of
from inspectd.bundle_seal import seal
from inspectd.engine.gpu import checked, cudart, current_target, import_tensorrt
from inspectd.engine.trt_files import (
    ENGINE_SUFFIX,
    EngineInfo,
    Target,
    engine_file_name,
    parse_engine_file_name,
    sidecar_of,
    timing_cache_name,
)

PRECISIONS = ("fp16", "int8", "fp32")
MIN_TRT_MAJOR = 10
WORKSPACE_MIB = 2048  # memory-pool limit for tactics; a Jetson Orin NX shares 8-16 GB with the CPU
CALIB_BATCH = 8
MIN_CALIB_IMAGES = 32  # fewer give unstable INT8 ranges; TensorRT's guidance is ~500


class BuildError(Exception):
    """The engine could not be built: the message says why and what to do."""


# -- pure functions (unit-tested without TensorRT) ---------------------------------------------


def keeps_fp32(layer_name: str, family: str) -> bool:
    """Whether a layer of the exported graph (named after its ONNX node: the exporter's module
    paths, /model/... and /head/...) must compute in fp32 in a reduced-precision build."""
    if layer_name.startswith("/head/"):
        return True
    search = layer_name.startswith("/model/") and not layer_name.startswith("/model/backbone/")
    return family == "patchcore" and search


def pin_fp32(trt: Any, network: Any, family: str) -> int:
    """Constrain the `keeps_fp32` layers with floating outputs (not shape arithmetic) to fp32;
    returns how many were constrained."""
    floats = (trt.float32, trt.float16)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = range(layer.num_outputs)
        if not keeps_fp32(layer.name, family):
            continue
        if not all(layer.get_output(j).dtype in floats for j in outputs):
            continue
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def builder_flags(precision: str, trt_version: str) -> list[str]:
    """Names of the `trt.BuilderFlag`s to set for `precision` on this TensorRT version."""
    if precision not in PRECISIONS:
        raise BuildError(f"unknown precision {precision!r} (allowed: {', '.join(PRECISIONS)})")
    major = int(trt_version.split(".")[0])
    if major < MIN_TRT_MAJOR:
        raise BuildError(
            f"TensorRT {trt_version} is too old: the engine code needs TensorRT "
            f"{MIN_TRT_MAJOR} or newer (named tensors, execute_async_v3)"
        )
    if precision == "fp32":
        return []
    if major >= 11:
        fix = (
            "quantise the model explicitly (Q/DQ nodes, NVIDIA ModelOpt)"
            if precision == "int8"
            else "convert model.onnx with ModelOpt AutoCast (python -m modelopt.onnx.autocast)"
        )
        raise BuildError(
            f"TensorRT {trt_version} builds strongly typed networks only: it has no {precision} "
            f"builder flag. Build --precision fp32, or {fix} and build from that graph"
        )
    # INT8 keeps FP16 on so layers without an INT8 kernel fall back to fp16, not fp32.
    return ["FP16"] if precision == "fp16" else ["FP16", "INT8"]


def batch_profile(batch: int) -> tuple[int, int, int]:
    """(min, opt, max) of the batch axis."""
    if not 1 <= batch <= 64:
        raise BuildError(f"--batch must be 1..64 (engine.max_batch's range), got {batch}")
    return (1, batch, batch)


def files_with_engine(files: Sequence[str], engine_name: str) -> list[str]:
    """The manifest's file list with `engine_name` and its sidecar added, replacing an earlier
    engine for the same GPU and TensorRT (one engine per target); engines for other targets
    stay, so one bundle can carry engines for several kinds of box."""
    new = parse_engine_file_name(engine_name)
    if new is None:
        raise ValueError(f"not an engine file name: {engine_name}")
    keep = []
    for f in files:
        base = f.removesuffix(".json")
        old = parse_engine_file_name(base)
        if old is not None and (old.stem, old.gpu, old.sm, old.trt) == (
            new.stem,
            new.gpu,
            new.sm,
            new.trt,
        ):
            continue
        keep.append(f)
    return sorted({*keep, engine_name, engine_name + ".json"})


def calib_cache_name(onnx_sha256: str, images_digest: str) -> str:
    return f"calib.{onnx_sha256[:16]}.{images_digest[:12]}.cache"


# -- progress ----------------------------------------------------------------------------------


def _progress_monitor(trt: Any, out: TextIO) -> Any:
    """An IProgressMonitor that prints phases as they start and finish (None where this
    TensorRT has no progress monitor)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT calls from its own threads
            self._depth: dict[str, int] = {}
            self._steps: dict[str, int] = {}
            self._t0: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._depth[phase_name], self._steps[phase_name] = depth, num_steps
                self._t0[phase_name] = time.monotonic()
                if depth <= 1:  # deeper phases are per-layer tactic timing: too many lines
                    print(f"{'  ' * depth}{phase_name} ({num_steps} steps)", file=out, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                if self._depth.get(phase_name) == 0:
                    print(
                        f"  step {step + 1}/{self._steps.get(phase_name, '?')}",
                        file=out,
                        flush=True,
                    )
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                depth = self._depth.pop(phase_name, 0)
                if depth <= 1:
                    s = time.monotonic() - self._t0.pop(phase_name, time.monotonic())
                    print(f"{'  ' * depth}{phase_name} done in {s:.1f} s", file=out, flush=True)

    return Monitor()


# -- INT8 calibration (TensorRT 10 only) -------------------------------------------------------


def _calibrator(trt: Any, images: np.ndarray, cache_path: Path) -> Any:
    """IInt8EntropyCalibrator2 over preprocessed good parts (uint8 N x H x W x 3)."""
    rt = cudart()

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.i = 0
            self.device = checked(rt, rt.cudaMalloc(CALIB_BATCH * images[0].nbytes))

        def get_batch_size(self) -> int:
            return CALIB_BATCH

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.i + CALIB_BATCH > len(images):
                return None
            chunk = np.ascontiguousarray(images[self.i : self.i + CALIB_BATCH])
            self.i += CALIB_BATCH
            checked(
                rt,
                rt.cudaMemcpy(
                    self.device,
                    chunk.ctypes.data,
                    chunk.nbytes,
                    rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                ),
            )
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(cache))

    return Calibrator()


def _calibration_images(bundle: Any, folder: Path | None) -> tuple[np.ndarray, str]:
    import hashlib

    from inspectd.imagefile import IMAGE_EXTENSIONS
    from inspectd.preprocess import load_inputs

    if folder is None:
        raise BuildError(
            "--precision int8 needs --calib-images DIR (good parts, the more the "
            f"better; at least {MIN_CALIB_IMAGES})"
        )
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(paths) < MIN_CALIB_IMAGES:
        raise BuildError(
            f"{folder}: {len(paths)} images; INT8 calibration needs at least "
            f"{MIN_CALIB_IMAGES} good parts"
        )
    digest = hashlib.sha256("".join(sha256_of(p) for p in paths).encode()).hexdigest()
    return load_inputs(paths, bundle.manifest.preprocess), digest


# -- the build ---------------------------------------------------------------------------------


def builder_available() -> bool:
    """TensorRT with its builder and ONNX parser (the lean runtime wheels have neither)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        trt = import_tensorrt()
    except Exception:
        return False
    return hasattr(trt, "Builder") and hasattr(trt, "OnnxParser")


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files (model.onnx.data) beside the graph
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(
            f"{onnx_path}: TensorRT's ONNX parser refused the graph:\n  "
            + "\n  ".join(errors or ["(no error details)"])
        )


def build_engine(
    bundle_path: Path,
    *,
    version: int | None = None,
    precision: str = "fp16",
    batch: int = 1,
    calib_images: Path | None = None,
    state_dir: Path | None = None,
    out: Path | None = None,
    seal_into_bundle: bool = True,
    progress: TextIO | None = sys.stderr,
    workspace_mib: int = WORKSPACE_MIB,
    target: Target | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Path:
    """Build the bundle's ONNX into a TensorRT engine for this GPU; returns the engine's path.

    `bundle_path` is the product folder, built at its active version (or `version`). `out`
    defaults to `model.<tag>.engine` beside the ONNX; with `seal_into_bundle` the manifest then
    lists it and its sidecar with their sha256. The timing cache (and an INT8
    calibration cache) live in `state_dir` (default: the bundle's parent's `.trt-cache`).
    """
    trt = import_tensorrt()
    if not builder_available():
        raise BuildError(
            "this TensorRT has no builder (only the runtime is installed); build "
            "the engine on a machine with the full TensorRT of the same version"
        )
    bundle = load_bundle(bundle_path, version)
    target = target or current_target(trt.__version__)
    flags = builder_flags(precision, trt.__version__)
    bmin, bopt, bmax = batch_profile(batch)
    state_dir = state_dir or bundle_path.parent / ".trt-cache"
    state_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = bundle.model_path
    out = out or bundle.path / engine_file_name(target, bundle.manifest.model.file)
    say(
        f"building {out.name}: {precision}, batch {bmin}..{bmax}, TensorRT {trt.__version__}, "
        f"{target.gpu_name} (sm{target.compute_capability[0]}{target.compute_capability[1]})"
    )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    _parse(trt, network, logger, onnx_path)
    inp = network.get_input(0)
    h, w = int(inp.shape[1]), int(inp.shape[2])

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if flags:
        pinned = pin_fp32(trt, network, bundle.manifest.model.family)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            say(f"{pinned} layers kept in fp32 (the scoring head, a memory search)")
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (bmin, h, w, 3), (bopt, h, w, 3), (bmax, h, w, 3))
    config.add_optimization_profile(profile)
    if precision == "int8":
        images, digest = _calibration_images(bundle, calib_images)
        cache = state_dir / calib_cache_name(bundle.model_sha256, digest)
        config.int8_calibrator = _calibrator(trt, images, cache)
        config.set_calibration_profile(profile)
        say(f"INT8 calibration on {len(images)} good parts (cache {cache})")

    timing_path = state_dir / timing_cache_name(target)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    monitor = _progress_monitor(trt, progress) if progress is not None else None
    if monitor is not None:
        config.progress_monitor = monitor

    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("TensorRT could not build the engine (its log above says why)")
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)
    info = EngineInfo(
        onnx_sha256=bundle.model_sha256,
        precision=precision,
        batch_min=bmin,
        batch_opt=bopt,
        batch_max=bmax,
        gpu_name=target.gpu_name,
        compute_capability=f"{target.compute_capability[0]}.{target.compute_capability[1]}",
        trt_version=target.trt_version,
        built=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    sidecar_of(out).write_text(info.to_json())
    say(f"built {out} in {time.monotonic() - t0:.0f} s ({out.stat().st_size / 1e6:.1f} MB)")
    if seal_into_bundle and out.parent == bundle.path:
        add_engine_to_manifest(bundle.path, out.name)
    return out


def add_engine_to_manifest(bundle_path: Path, engine_name: str) -> None:
    """Re-seal the manifest with the engine and its sidecar listed (see files_with_engine)."""
    if not engine_name.endswith(ENGINE_SUFFIX):
        raise ValueError(engine_name)
    manifest = yaml.safe_load((bundle_path / MANIFEST).read_text())
    seal(bundle_path, manifest, files_with_engine(list(manifest["files"]), engine_name))
    # prove the daemon accepts what we wrote (the folder may be a version of its product)
    load_bundle_folder(bundle_path, manifest["name"], (manifest.get("version") or {}).get("id", 1))
