"""Engine backends: the torch engine against ONNX Runtime on a real bundle, the automatic
choice, verify-engine, and the daemon's lean imports. CUDA paths skip without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from support.paths import SHIPPED

torch = pytest.importorskip("torch")

from inspectd.bundle import MANIFEST, Bundle, load_bundle  # noqa: E402
from inspectd.deploy.parity import compare, run_all, sample_images  # noqa: E402
from inspectd.engine import EngineError, EngineUnavailable, InferenceResult, load_engine  # noqa: E402
from inspectd.engine.selection import Facts, choose_backend  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A real bundle (ae, 128 px) trained for one epoch: model.onnx, model.pt, thresholds."""
    from inspectd.synthetic import write_dataset
    from inspectd.train.loop import TrainSettings
    from inspectd.train.train_bundle import BuildRequest, build_product

    root = tmp_path_factory.mktemp("engines")
    write_dataset(root / "data", seed=1, n_train_good=10, n_test_good=3, n_test_per_defect=1)
    out = build_product(
        BuildRequest(
            product="tiny",
            data=root / "data",
            out=root / "products" / "tiny",
            model="ae",
            params={"input_size": 128, "latent_dim": 16},
            settings=TrainSettings(epochs=1, batch_size=4),
        )
    )
    return load_bundle(out)


@pytest.fixture(scope="session")
def parts(tiny: Bundle) -> tuple[list[str], np.ndarray]:
    return sample_images(tiny, None, n=9)


def test_torch_engine_matches_onnxruntime_maps_and_verdicts(tiny: Bundle, parts) -> None:
    names, images = parts
    ort = load_engine(tiny.model_path, backend="onnxruntime")
    eng = load_engine(tiny.model_path, backend="torch", device="cpu", bundle=tiny)
    assert eng.name == "torch" and eng.input_hw == ort.input_hw == (128, 128)
    want, got = run_all(ort, images), run_all(eng, images)
    assert got.anomaly_map.dtype == np.float32 and got.score.dtype == np.float32
    assert got.anomaly_map.shape == (9, 128, 128) and got.score.shape == (9,)
    np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.score, want.score, atol=1e-4, rtol=0)
    assert compare(want, got, names, tiny.thresholds.image).agree
    # a one-epoch model may put every part on one side of its threshold: also judge at the
    # median score (between two parts: a score exactly at a threshold flips on float noise),
    # so agreement is shown for OK and NG verdicts alike
    s = np.sort(want.score)
    c = compare(want, got, names, float(s[4] + s[5]) / 2)
    assert c.agree and c.max_map_diff <= 1e-4


def test_torch_engine_builds_the_head_the_manifest_records(
    tiny: Bundle, parts, tmp_path: Path
) -> None:
    """A bundle exported with a non-default scoring head (mean filter 11) scores the same on the
    torch engine: the head comes from the manifest's scoring section, not the family defaults."""
    import shutil

    from inspectd.bundle import sha256_of
    from inspectd.bundle_seal import seal, write_thresholds
    from inspectd.deploy.export import export_onnx
    from inspectd.models import load_graph
    from inspectd.models.scoring import MsgmsL2Head

    b = tmp_path / "tiny"
    shutil.copytree(tiny.path, b)
    graph = load_graph(tiny)
    graph.head = MsgmsL2Head(mean_filter=11)
    export_onnx(graph, b / "model.onnx", (128, 128))
    write_thresholds(
        b, tiny.thresholds.model_copy(update={"model_sha256": sha256_of(b / "model.onnx")})
    )
    manifest = yaml.safe_load((b / MANIFEST).read_text())
    manifest["scoring"]["mean_filter"] = 11
    seal(b, manifest, list(manifest["files"]))
    bundle = load_bundle(b)
    _, images = parts
    want = run_all(load_engine(bundle.model_path, backend="onnxruntime"), images)
    got = run_all(
        load_engine(bundle.model_path, backend="torch", device="cpu", bundle=bundle), images
    )
    np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, atol=1e-4, rtol=0)
    assert (
        np.abs(
            want.anomaly_map
            - run_all(load_engine(tiny.model_path, backend="onnxruntime"), images).anomaly_map
        ).max()
        > 1e-3
    )  # the filter matters


def test_torch_engine_splits_batches_larger_than_max_batch(tiny: Bundle, parts) -> None:
    _, images = parts
    one = load_engine(tiny.model_path, backend="torch", bundle=tiny, max_batch=1).infer(images[:5])
    two = load_engine(tiny.model_path, backend="torch", bundle=tiny, max_batch=2).infer(images[:5])
    assert two.score.shape == (5,)
    np.testing.assert_allclose(two.anomaly_map, one.anomaly_map, atol=1e-5)
    with pytest.raises(ValueError, match="uint8 N x 128 x 128 x 3"):
        load_engine(tiny.model_path, backend="torch", bundle=tiny).infer(
            images[:1].astype(np.float32)
        )


def _without_checkpoint(bundle: Bundle, dest: Path) -> Bundle:
    """The bundle as old ones were sealed: no model.pt, model.checkpoint unset."""
    import shutil

    from inspectd.bundle_seal import seal

    shutil.copytree(bundle.path, dest)
    (dest / "model.pt").unlink()
    manifest = yaml.safe_load((dest / MANIFEST).read_text())
    manifest["model"]["checkpoint"] = None
    seal(dest, manifest, [f for f in manifest["files"] if f != "model.pt"])
    return load_bundle(dest)


def test_torch_engine_refuses_a_bundle_without_weights_and_says_what_to_do(
    tiny: Bundle, tmp_path: Path
) -> None:
    old = _without_checkpoint(tiny, tmp_path / "tiny")
    with pytest.raises(EngineError, match=r"no trained weights.*inspectd train.*onnxruntime"):
        load_engine(old.model_path, backend="torch", bundle=old)
    with pytest.raises(EngineError, match="needs the bundle"):
        load_engine(tiny.model_path, backend="torch")


def test_tensorrt_backend_without_tensorrt_is_unavailable_not_a_crash(
    tiny: Bundle, tmp_path: Path
) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: test_tensorrt.py covers the real backend")
    except ImportError:
        pass
    with pytest.raises(EngineUnavailable, match=r"cuda-python|TensorRT|GPU"):
        load_engine(tiny.model_path, backend="tensorrt", bundle=tiny, state_dir=tmp_path)


def test_auto_without_tensorrt_takes_onnxruntime_and_logs_why(tiny: Bundle, capsys) -> None:
    from inspectd.logs import configure_logging

    configure_logging("info", "console")
    engine = load_engine(tiny.model_path, backend="auto", bundle=tiny)
    assert engine.name == "onnxruntime"
    err = capsys.readouterr()
    assert "engine.chosen" in err.out + err.err


# -- the automatic choice: a pure function over injected facts ---------------------------------

GPU = "NVIDIA H100 80GB HBM3 (sm90)"
ENGINE = "model.nvidia-h100-80gb-hbm3-sm90-trt10.3.0.engine"


@pytest.mark.parametrize(
    ("facts", "backend", "because"),
    [
        (Facts(False, False, None, None, False), "onnxruntime", "TensorRT is not installed"),
        (Facts(True, False, GPU, ENGINE, True), "onnxruntime", "cuda-python is not"),
        (Facts(True, True, None, None, True), "onnxruntime", "no CUDA GPU"),
        (Facts(True, True, GPU, ENGINE, False), "tensorrt", ENGINE),
        (Facts(True, True, GPU, None, True), "tensorrt", "building one"),
        (Facts(True, True, GPU, None, False), "onnxruntime", "run inspectd build-engine"),
    ],
)
def test_auto_choice(facts: Facts, backend: str, because: str) -> None:
    choice = choose_backend("auto", facts)
    assert choice.backend == backend
    assert because in choice.why


def test_configured_backend_is_taken_as_is_and_unknown_is_refused() -> None:
    nothing = Facts(False, False, None, None, False)
    assert (
        choose_backend("tensorrt", nothing).backend == "tensorrt"
    )  # its loader says what is missing
    assert choose_backend("torch", nothing).why == "configured"
    with pytest.raises(ValueError, match="allowed: auto, onnxruntime, torch, tensorrt"):
        choose_backend("trt", nothing)


def test_engine_config_takes_the_new_backends() -> None:
    from pydantic import ValidationError

    from inspectd.config.engine import EngineConfig

    cfg = EngineConfig.model_validate({"backend": "torch", "device": "cuda", "precision": "fp32"})
    assert cfg.backend == "torch" and cfg.cuda_graphs is True
    assert EngineConfig.model_validate({"backend": "tensorrt"}).precision == "fp16"
    with pytest.raises(ValidationError):
        EngineConfig.model_validate({"backend": "trt"})


# -- verify-engine ------------------------------------------------------------------------------


def test_compare_finds_verdicts_that_cross_the_threshold_and_nan() -> None:
    maps = np.zeros((3, 4, 4), np.float32)
    ref = InferenceResult(maps, np.array([0.1, 0.5, 0.9], np.float32))
    cand = InferenceResult(maps + 0.01, np.array([0.1, 0.49, np.nan], np.float32))
    c = compare(ref, cand, ["a", "b", "c"], image_threshold=0.5)
    assert [d.name for d in c.disagreements] == ["b"]  # NaN is NG like 0.9 (never OK)
    assert (c.disagreements[0].reference, c.disagreements[0].candidate) == ("NG", "OK")
    assert c.max_score_diff == np.inf and abs(c.max_map_diff - 0.01) < 1e-6


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inspectd", *args], capture_output=True, text=True, timeout=300
    )


def test_verify_engine_cli_torch_on_cpu_agrees(tiny: Bundle) -> None:
    r = _cli(
        "verify-engine",
        "--product",
        "tiny",
        "--products",
        str(tiny.path.parent),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--count",
        "6",
    )
    assert r.returncode == 0, r.stderr
    assert "torch vs onnxruntime on 6 parts" in r.stdout and "verdicts: all 6 agree" in r.stdout


def test_the_demo_bundle_runs_on_the_torch_engine_with_the_onnx_verdicts() -> None:
    """products/button, the shipped hybrid, carries model.pt with the fp16-rounded weights its
    model.onnx holds: verify-engine on the demo parts finds the same maps and verdicts."""
    products = SHIPPED
    r = _cli(
        "verify-engine",
        "--product",
        "button",
        "--products",
        str(products),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--count",
        "16",
    )
    assert r.returncode == 0, r.stderr
    assert "verdicts: all 16 agree" in r.stdout


def test_engine_commands_exit_2_where_tensorrt_or_a_gpu_is_missing(tiny: Bundle) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    where = ["--product", "tiny", "--products", str(tiny.path.parent)]
    r = _cli("verify-engine", *where, "--backend", "torch")  # --device cuda by default
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        r = _cli("build-engine", *where)
        assert r.returncode == 2 and "TensorRT with its builder is not installed" in r.stderr
        r = _cli("verify-engine", *where, "--backend", "tensorrt")
        assert r.returncode == 2 and "inspectd verify-engine:" in r.stderr


def test_daemon_engine_loading_does_not_import_torch(tiny: Bundle) -> None:
    """auto and onnxruntime, with the bundle as the station passes it: no torch, no training."""
    code = (
        "import sys\n"
        "from inspectd.bundle import load_bundle\n"
        "from inspectd.engine import load_engine\n"
        f"b = load_bundle(__import__('pathlib').Path({str(tiny.path)!r}))\n"
        "for backend in ('auto', 'onnxruntime'):\n"
        "    e = load_engine(b.model_path, backend=backend, bundle=b, max_batch=2)\n"
        "    e.warmup(1)\n"
        "runtime = ('inspectd.models', 'inspectd.train')\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(runtime)]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# -- CUDA (skipped without a GPU) ---------------------------------------------------------------


@CUDA
def test_cuda_fp32_matches_cpu_and_graph_replay_matches_eager(tiny: Bundle, parts) -> None:
    _, images = parts
    cpu = load_engine(tiny.model_path, backend="torch", bundle=tiny).infer(images)
    eager = load_engine(
        tiny.model_path,
        backend="torch",
        device="cuda",
        bundle=tiny,
        precision="fp32",
        cuda_graphs=False,
        max_batch=4,
    ).infer(images)
    graphed = load_engine(
        tiny.model_path,
        backend="torch",
        device="cuda",
        bundle=tiny,
        precision="fp32",
        cuda_graphs=True,
        max_batch=4,
    )
    graphed.warmup(1)
    a, b = graphed.infer(images), graphed.infer(images[::-1].copy())  # replays reuse static buffers
    np.testing.assert_allclose(eager.anomaly_map, cpu.anomaly_map, atol=1e-4)
    np.testing.assert_allclose(a.anomaly_map, eager.anomaly_map, atol=1e-5)
    np.testing.assert_allclose(b.anomaly_map, a.anomaly_map[::-1], atol=1e-5)


@CUDA
def test_cuda_fp16_returns_float32_and_keeps_every_verdict(tiny: Bundle, parts) -> None:
    names, images = parts
    ref = run_all(load_engine(tiny.model_path, backend="onnxruntime"), images)
    eng = load_engine(
        tiny.model_path, backend="torch", device="cuda", bundle=tiny, precision="fp16", max_batch=8
    )
    got = run_all(eng, images)
    assert got.anomaly_map.dtype == np.float32
    c = compare(ref, got, names, tiny.thresholds.image)
    assert c.agree, c.disagreements
    assert c.max_map_diff < 5e-3  # fp16 reconstruction, fp32 scoring
