"""TensorRT: engine naming, compatibility checks, cache keys, precision rules and the manifest
update, without TensorRT; the builder's orchestration against a stand-in `tensorrt` module (the
builder cannot be installed on our machines); the real build and runtime where TensorRT and a GPU
are there."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from inspectd.bundle import MANIFEST, THRESHOLDS, BundleError, load_bundle, sha256_of
from inspectd.bundle_seal import seal
from inspectd.engine.trt_build import (
    BuildError,
    add_engine_to_manifest,
    batch_profile,
    build_engine,
    builder_flags,
    files_with_engine,
    keeps_fp32,
    pin_fp32,
)
from inspectd.engine.trt_files import (
    EngineInfo,
    Target,
    cache_key,
    engine_file_name,
    gpu_slug,
    mismatches,
    parse_engine_file_name,
    short_version,
    sidecar_of,
    timing_cache_name,
    usable_engine,
)

H100 = Target("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0.26")
ORIN = Target("Orin (nvgpu)", (8, 7), "10.3.0")
NEEDS_TRT = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None,
    reason="needs TensorRT (the builder cannot be installed on our machines; runs on a Jetson or "
    "GPU box)",
)


# -- naming and compatibility -------------------------------------------------------------------


def test_gpu_slug_and_versions() -> None:
    assert gpu_slug("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert gpu_slug("Orin (nvgpu)") == "orin-nvgpu"
    assert gpu_slug("  NVIDIA  A10G ") == "nvidia-a10g"
    with pytest.raises(ValueError, match="no letters or digits"):
        gpu_slug("()")
    assert short_version("10.3.0.26") == "10.3.0"
    assert short_version("11.1") == "11.1.0"
    with pytest.raises(ValueError):
        short_version("dev")


def test_engine_name_round_trips_and_binds_gpu_cc_and_version() -> None:
    name = engine_file_name(H100)
    assert name == "model.nvidia-h100-80gb-hbm3-sm90-trt10.3.0.engine"
    parsed = parse_engine_file_name(name)
    assert parsed is not None and (parsed.stem, parsed.gpu, parsed.sm, parsed.trt) == (
        "model",
        "nvidia-h100-80gb-hbm3",
        "90",
        "10.3.0",
    )
    assert engine_file_name(ORIN) == "model.orin-nvgpu-sm87-trt10.3.0.engine"
    assert parse_engine_file_name("model.onnx") is None
    assert parse_engine_file_name("model.h100.engine") is None  # no sm/trt parts: not ours


def test_mismatches_name_each_difference() -> None:
    name = engine_file_name(H100)
    assert mismatches(name, Target("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0.1")) == []  # build part
    assert mismatches(name, Target("NVIDIA H100 80GB HBM3", (9, 0), "10.4.0")) == [
        "built with TensorRT 10.3.0, this is TensorRT 10.4.0"
    ]
    why = mismatches(name, ORIN)
    assert any("GPU nvidia-h100-80gb-hbm3, this is orin-nvgpu" in w for w in why)
    assert any("sm90, this GPU is sm87" in w for w in why)
    assert "is not named" in mismatches("whatever.engine", H100)[0]


def test_cache_keys_change_with_everything_that_makes_engines_differ() -> None:
    base = cache_key("a" * 64, H100, "fp16", 8)
    assert base.endswith(".nvidia-h100-80gb-hbm3-sm90-trt10.3.0.engine")
    assert parse_engine_file_name(base) is not None  # the runtime's name check applies to it too
    others = {
        cache_key("b" * 64, H100, "fp16", 8),
        cache_key("a" * 64, ORIN, "fp16", 8),
        cache_key("a" * 64, H100, "fp32", 8),
        cache_key("a" * 64, H100, "fp16", 4),
    }
    assert base not in others and len(others) == 4
    assert cache_key("a" * 64, H100, "fp16", 8) == base
    assert timing_cache_name(H100) != timing_cache_name(ORIN)


def _engine(
    folder: Path, target: Target, onnx_sha: str, batch_max: int = 8, sidecar: bool = True
) -> Path:
    path = folder / engine_file_name(target)
    path.write_bytes(b"plan")
    if sidecar:
        sidecar_of(path).write_text(
            EngineInfo(
                onnx_sha,
                "fp16",
                1,
                batch_max,
                batch_max,
                target.gpu_name,
                "9.0",
                target.trt_version,
                "2026-01-01T00:00:00+00:00",
            ).to_json()
        )
    return path


def test_usable_engine_checks_target_model_and_batch(tmp_path: Path) -> None:
    sha = "c" * 64
    (
        (tmp_path / "a").mkdir(),
        (tmp_path / "b").mkdir(),
        (tmp_path / "c").mkdir(),
        (tmp_path / "d").mkdir(),
    )
    orin = _engine(tmp_path / "a", ORIN, sha)
    stale = _engine(tmp_path / "b", H100, "d" * 64)
    bare = _engine(tmp_path / "c", H100, sha, sidecar=False)
    small = _engine(tmp_path / "d", H100, sha, batch_max=2)
    found, why = usable_engine([orin, stale, bare, small], H100, sha, batch=4)
    assert found is None and len(why) == 4
    assert "sm87" in why[0] and "another model.onnx" in why[1]
    assert "no model." in why[2] and "up to 2, engine.max_batch is 4" in why[3]
    found, _ = usable_engine([orin, small], H100, sha, batch=2)
    assert found == small
    (tmp_path / "d" / (small.name + ".json")).write_text("{not json")
    with pytest.raises(Exception, match="unreadable engine description"):
        usable_engine([small], H100, sha, batch=1)


# -- precision rules ----------------------------------------------------------------------------


def test_builder_flags_per_precision_and_tensorrt_version() -> None:
    assert builder_flags("fp32", "10.3.0") == []
    assert builder_flags("fp16", "10.3.0") == ["FP16"]
    assert builder_flags("int8", "10.13.2") == ["FP16", "INT8"]  # INT8 falls back to fp16
    assert builder_flags("fp32", "11.1.0") == []
    with pytest.raises(BuildError, match="strongly typed.*ModelOpt AutoCast"):
        builder_flags("fp16", "11.1.0")
    with pytest.raises(BuildError, match="strongly typed.*Q/DQ"):
        builder_flags("int8", "11.0.0")
    with pytest.raises(BuildError, match="too old"):
        builder_flags("fp16", "8.6.1")
    with pytest.raises(BuildError, match="allowed: fp16, int8, fp32"):
        builder_flags("bf16", "10.3.0")
    assert batch_profile(8) == (1, 8, 8)
    with pytest.raises(BuildError, match="1..64"):
        batch_profile(0)


def test_the_head_and_patchcores_memory_search_are_pinned_to_fp32() -> None:
    """Layers named as the exporter names them (tests/component/test_patchcore.py exports the
    graph these names come from); a stand-in network (mock: no TensorRT here)."""
    float32, float16, int64 = "float32", "float16", "int64"

    class Tensor:
        def __init__(self, dtype: str) -> None:
            self.dtype = dtype

    class Layer:
        def __init__(self, name: str, dtype: str = float16) -> None:
            self.name, self.num_outputs, self.precision = name, 1, None
            self.out = Tensor(dtype)
            self.output_types: dict[int, str] = {}

        def get_output(self, j: int) -> Tensor:
            return self.out

        def set_output_type(self, j: int, dtype: str) -> None:
            self.output_types[j] = dtype

    names = ["/model/backbone/net/_blocks.0/Conv", "/model/Gemm", "/model/ArgMin", "/head/Conv"]
    layers = [Layer(n) for n in names] + [Layer("/model/Shape", int64)]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    trt = types.SimpleNamespace(float32=float32, float16=float16)
    assert pin_fp32(trt, network, "patchcore") == 3  # search and head, not the backbone
    assert [la.precision for la in layers] == [None, float32, float32, float32, None]
    assert layers[1].output_types == {0: float32}
    assert keeps_fp32("/head/Conv", "hybrid") and not keeps_fp32("/model/vgg/Conv", "hybrid")
    assert not keeps_fp32("/model/Gemm", "hybrid")  # a reconstruction model is the network


# -- the manifest update ------------------------------------------------------------------------


def _bundle(root: Path) -> Path:
    """A sealed bundle the loader accepts; the graph's bytes are not parsed by load_bundle, so
    no torch is needed to make one."""
    b = root / "tiny"
    b.mkdir(parents=True)
    (b / "model.onnx").write_bytes(b"onnx graph bytes")
    sha = sha256_of(b / "model.onnx")
    (b / THRESHOLDS).write_text(
        yaml.safe_dump(
            {
                "schema": "inspectd.thresholds/1",
                "image": 0.5,
                "pixel": 0.4,
                "model_sha256": sha,
                "method": "test",
                "n_good": 1,
                "created": "2026-01-01T00:00:00+00:00",
                "tool_version": "0",
            }
        )
    )
    manifest = {
        "schema": "inspectd.bundle/1",
        "name": "tiny",
        "created": "2026-01-01T00:00:00+00:00",
        "tool_version": "0",
        "model": {"family": "ae", "file": "model.onnx", "opset": 17},
        "preprocess": {"size": [128, 128]},
        "scoring": {"method": "msgms_l2"},
    }
    seal(b, manifest, ["model.onnx", THRESHOLDS])
    load_bundle(b)
    return b


def test_files_with_engine_replaces_the_same_target_and_keeps_others() -> None:
    h100, orin = engine_file_name(H100), engine_file_name(ORIN)
    files = ["model.onnx", THRESHOLDS, orin, orin + ".json", h100, h100 + ".json"]
    assert files_with_engine(files, h100) == sorted(files)
    newer = engine_file_name(Target(H100.gpu_name, (9, 0), "10.4.0"))
    got = files_with_engine(files, newer)
    assert (
        newer in got and newer + ".json" in got and orin in got and h100 in got
    )  # other TRT stays
    with pytest.raises(ValueError):
        files_with_engine(files, "model.onnx")


def test_engine_in_manifest_is_verified_by_load_bundle(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    engine = _engine(b, H100, load_bundle(b).model_sha256)
    add_engine_to_manifest(b, engine.name)
    files = yaml.safe_load((b / MANIFEST).read_text())["files"]
    assert files[engine.name] == sha256_of(engine) and engine.name + ".json" in files
    engine.write_bytes(b"another plan")  # an engine swapped behind the manifest's back
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_bundle(b)
    engine.unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(b)


# -- the builder against a stand-in TensorRT ----------------------------------------------------


class _FakeTrt:
    """A stand-in for the `tensorrt` module (mock: TensorRT's builder cannot be installed here).
    It records what build_engine asks for and plays the progress monitor's calls."""

    def __init__(self, version: str = "10.3.0", parse_ok: bool = True) -> None:
        self.calls: dict[str, object] = {"flags": []}
        calls, fake = self.calls, self

        class Logger:
            WARNING = 2

            def __init__(self, severity: int) -> None:
                pass

        class Input:
            name, shape = "image", (-1, 128, 128, 3)

        class Network:
            num_layers = 0

            def get_input(self, i: int) -> Input:
                return Input()

        class Error:
            def __str__(self) -> str:
                return "In node 7 (parseGraph): UNSUPPORTED_NODE: Cast to UINT8"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network: Network, logger: Logger) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                calls["onnx"] = path
                return parse_ok

            def get_error(self, i: int) -> Error:
                return Error()

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+"

        class Profile:
            def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
                calls["profile"] = (name, shapes)

        class Config:
            progress_monitor = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                calls["workspace"] = size

            def set_flag(self, flag: str) -> None:
                calls["flags"].append(flag)  # type: ignore[attr-defined]

            def add_optimization_profile(self, p: Profile) -> None:
                pass

            def create_timing_cache(self, data: bytes) -> Cache:
                calls["timing_in"] = data
                self.cache = Cache(data)
                return self.cache

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                pass

            def get_timing_cache(self) -> Cache:
                return self.cache

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                return Network()

            def create_builder_config(self) -> Config:
                fake.config = Config()
                return fake.config

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                m = config.progress_monitor
                if m is not None:
                    m.phase_start("Building engine", None, 2)
                    m.step_complete("Building engine", 0)
                    m.phase_finish("Building engine")
                return b"serialized plan"

        class IProgressMonitor:
            def __init__(self) -> None:
                pass

        self.module = types.ModuleType("tensorrt")
        self.module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        self.module.__version__ = version
        for k, v in {
            "Logger": Logger,
            "Builder": Builder,
            "OnnxParser": OnnxParser,
            "IProgressMonitor": IProgressMonitor,
            "MemoryPoolType": types.SimpleNamespace(WORKSPACE="workspace"),
            "float32": "float32",
            "float16": "float16",
            "BuilderFlag": types.SimpleNamespace(
                FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY"
            ),
        }.items():
            setattr(self.module, k, v)


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> _FakeTrt:
    fake = _FakeTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    return fake


def test_build_writes_engine_and_sidecar_seals_them_and_keeps_the_timing_cache(
    tmp_path: Path, fake_trt: _FakeTrt
) -> None:
    b = _bundle(tmp_path / "products")
    state, out = tmp_path / "state", io.StringIO()
    path = build_engine(b, precision="fp16", batch=8, state_dir=state, target=H100, progress=out)
    assert path == b / "model.nvidia-h100-80gb-hbm3-sm90-trt10.3.0.engine"
    assert path.read_bytes() == b"serialized plan"
    assert fake_trt.calls["flags"] == ["FP16"]
    assert fake_trt.calls["profile"] == (
        "image",
        ((1, 128, 128, 3), (8, 128, 128, 3), (8, 128, 128, 3)),
    )
    info = EngineInfo.read(sidecar_of(path))
    bundle = load_bundle(b)  # sealed: the loader verifies the engine and its sidecar
    assert info.onnx_sha256 == bundle.model_sha256 and (info.precision, info.batch_max) == (
        "fp16",
        8,
    )
    assert path.name in bundle.manifest.files and path.name + ".json" in bundle.manifest.files
    assert usable_engine([path], H100, bundle.model_sha256, 8)[0] == path
    assert "Building engine (2 steps)" in out.getvalue() and "step 1/2" in out.getvalue()
    assert fake_trt.calls["timing_in"] == b""
    assert (state / timing_cache_name(H100)).read_bytes() == b"+"
    build_engine(b, precision="fp32", batch=8, state_dir=state, target=H100, progress=None)
    assert fake_trt.calls["timing_in"] == b"+"  # the second build starts from the saved cache
    assert fake_trt.calls["flags"] == ["FP16"]  # fp32 set no flag
    assert sorted(load_bundle(b).manifest.files).count(path.name) == 1


def test_build_reports_parser_errors_and_refuses_int8_without_images(
    tmp_path: Path, monkeypatch
) -> None:
    b = _bundle(tmp_path / "products")
    bad = _FakeTrt(parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", bad.module)
    with pytest.raises(BuildError, match="ONNX parser refused the graph:\n  In node 7"):
        build_engine(b, state_dir=tmp_path / "s", target=H100, progress=None)
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTrt().module)
    with pytest.raises(BuildError, match="--precision int8 needs --calib-images"):
        build_engine(b, precision="int8", state_dir=tmp_path / "s", target=H100, progress=None)
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTrt(version="11.1.0").module)
    with pytest.raises(BuildError, match="strongly typed"):
        build_engine(b, precision="fp16", state_dir=tmp_path / "s", target=H100, progress=None)
    assert not list(b.glob("*.engine"))


# -- real TensorRT (a Jetson or a GPU box) ------------------------------------------------------


@NEEDS_TRT
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engine_matches_onnxruntime(tmp_path: Path, precision: str) -> None:
    torch = pytest.importorskip("torch")
    from inspectd.deploy.export import export_onnx
    from inspectd.engine.onnxruntime import OnnxRuntimeEngine
    from inspectd.engine.tensorrt import TensorRTEngine
    from inspectd.models.ae import ConvAutoencoder
    from inspectd.models.graph import InspectionGraph

    b = _bundle(tmp_path / "products")
    torch.manual_seed(0)
    export_onnx(InspectionGraph(ConvAutoencoder(latent_dim=8)), b / "model.onnx", (128, 128))
    manifest = yaml.safe_load((b / MANIFEST).read_text())
    th = yaml.safe_load((b / THRESHOLDS).read_text())
    th["model_sha256"] = sha256_of(b / "model.onnx")
    (b / THRESHOLDS).write_text(yaml.safe_dump(th))
    seal(b, manifest, list(manifest["files"]))
    path = build_engine(
        b, precision=precision, batch=4, state_dir=tmp_path / "state", progress=None
    )
    images = np.random.default_rng(0).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    want = OnnxRuntimeEngine(b / "model.onnx").infer(images)
    for graphs in (False, True):
        engine = TensorRTEngine(path, max_batch=4, cuda_graphs=graphs)
        got = engine.infer(images)  # 6 parts: one batch of 4, one of 2
        engine.close()
        tol = 1e-4 if precision == "fp32" else 5e-3
        np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, atol=tol)
        assert got.score.dtype == np.float32 and got.score.shape == (6,)
