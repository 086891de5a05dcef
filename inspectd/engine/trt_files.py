"""TensorRT engine files: names, sidecars, compatibility and cache names.

A TensorRT engine is only valid for the GPU model (compute capability) and the TensorRT
version it was built with, and for the ONNX graph it was built from. So every engine carries
that in its file name, `model.<gpu-slug>-sm<cc>-trt<version>.engine`, and in a JSON sidecar
(`<engine>.json`: the ONNX sha256, precision, batch range). Pure functions, needing neither
TensorRT nor a GPU: the backend (inspectd.engine.tensorrt), which checks an engine before
loading it, and the builder (inspectd.engine.trt_build), which names what it writes, share them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from inspectd.engine.base import EngineError

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"  # engine file name + ".json"
ENGINE_SCHEMA = "inspectd.trt-engine/1"
_NAME = re.compile(
    r"^(?P<stem>[^.]+)\.(?P<gpu>[a-z0-9]+(?:-[a-z0-9]+)*?)-sm(?P<cc>\d+)-trt(?P<trt>\d+(?:\.\d+)*)"
    + re.escape(ENGINE_SUFFIX)
    + "$"
)


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
    """`model.<gpu-slug>-sm<cc>-trt<version>.engine`, named after the ONNX file it comes from."""
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
                    reasons = [
                        "built from another model.onnx (the model was retrained or re-exported)"
                    ]
                elif info.batch_max < batch:
                    reasons = [f"takes batches up to {info.batch_max}, engine.max_batch is {batch}"]
        if not reasons:
            return path, why_not
        why_not.append(f"{path.name}: " + "; ".join(reasons))
    return None, why_not


def engine_candidates(bundle_dir: Path, listed: list[str], state_dir: Path | None) -> list[Path]:
    """Engines the bundle lists (sealed by build-engine), then engines the daemon built itself
    into <state_dir>/engines."""
    found = [bundle_dir / f for f in sorted(listed) if f.endswith(ENGINE_SUFFIX)]
    if state_dir is not None and (state_dir / "engines").is_dir():
        found += sorted((state_dir / "engines").glob("*" + ENGINE_SUFFIX))
    return found
