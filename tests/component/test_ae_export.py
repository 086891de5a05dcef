"""The ae baseline, the exported graph and its parity with torch (real ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inspectd.deploy.export import export_onnx, parity  # noqa: E402
from inspectd.engine.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from inspectd.models.ae import ConvAutoencoder  # noqa: E402
from inspectd.models.graph import InspectionGraph  # noqa: E402
from inspectd.train.families import reconstruction_objective  # noqa: E402
from inspectd.train.loop import TrainSettings, split_indices, train_model  # noqa: E402


@pytest.mark.parametrize("size", [128, 256])
def test_ae_reconstructs_same_shape_in_unit_range_and_every_layer_gets_gradient(size: int) -> None:
    model = ConvAutoencoder(input_size=size, latent_dim=16)
    x = torch.rand(2, 3, size, size)
    y = model(x)
    assert y.shape == x.shape
    assert float(y.detach().min()) >= 0.0 and float(y.detach().max()) <= 1.0
    y.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_ae_refuses_unsupported_size() -> None:
    with pytest.raises(ValueError, match="128 or 256"):
        ConvAutoencoder(input_size=100)


def test_exported_graph_matches_torch_and_has_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    graph = InspectionGraph(ConvAutoencoder(latent_dim=8))
    path = export_onnx(graph, tmp_path / "model.onnx", (128, 128))
    images = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    assert parity(graph, path, images) <= 1e-4
    engine = OnnxRuntimeEngine(path)
    assert engine.input_hw == (128, 128)
    one = engine.infer(images[:1])
    three = engine.infer(images)
    assert one.anomaly_map.shape == (1, 128, 128) and three.score.shape == (3,)
    np.testing.assert_allclose(one.score, three.score[:1], rtol=1e-5)
    assert three.score.dtype == np.float32
    np.testing.assert_allclose(three.score, three.anomaly_map.reshape(3, -1).max(axis=1), rtol=1e-6)


def test_engine_refuses_wrong_input(tmp_path: Path) -> None:
    path = export_onnx(
        InspectionGraph(ConvAutoencoder(latent_dim=8)), tmp_path / "m.onnx", (128, 128)
    )
    engine = OnnxRuntimeEngine(path)
    with pytest.raises(ValueError, match="uint8 N x 128 x 128 x 3"):
        engine.infer(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        engine.infer(np.zeros((1, 128, 128, 3), np.float32))


def test_split_is_deterministic_and_disjoint() -> None:
    a_train, a_val = split_indices(50, 0.2, seed=3)
    b_train, b_val = split_indices(50, 0.2, seed=3)
    assert len(a_val) == 10 and len(a_train) == 40
    assert set(a_train).isdisjoint(a_val) and set(a_train) | set(a_val) == set(range(50))
    np.testing.assert_array_equal(a_val, b_val)
    assert not np.array_equal(a_val, split_indices(50, 0.2, seed=4)[1])


def test_tiny_training_run_lowers_the_loss_on_synthetic_buttons(tmp_path: Path) -> None:
    from inspectd.preprocess import PreprocessSpec, preprocess
    from inspectd.synthetic import render_part

    spec = PreprocessSpec(size=(128, 128))
    images = np.stack([preprocess(render_part(0, i, split="train")[0], spec)[0] for i in range(12)])
    model = ConvAutoencoder(latent_dim=32)
    ckpt = tmp_path / "ckpt.pt"
    result = train_model(
        model,
        images[:10],
        images[10:],
        TrainSettings(epochs=8, batch_size=2, lr=2e-3),
        reconstruction_objective,
        checkpoint=ckpt,
        progress=False,
    )
    first_train, _ = result.history[0]
    last_train, _ = result.history[-1]
    assert last_train < first_train * 0.95
    assert result.best_val_loss == min(v for _, v in result.history)
    assert ckpt.is_file()
    # --resume: a second run starts from the checkpoint, not from scratch
    resumed = train_model(
        ConvAutoencoder(latent_dim=32),
        images[:10],
        images[10:],
        TrainSettings(epochs=10, batch_size=2, lr=2e-3),
        reconstruction_objective,
        checkpoint=ckpt,
        progress=False,
    )
    assert len(resumed.history) == 10 - (result.best_epoch + 1)
    assert (result.stopped, resumed.stopped) == ("epochs", "epochs")
    # a time budget ends the run after the epoch that passes it, and says so
    cut = train_model(
        ConvAutoencoder(latent_dim=32),
        images[:10],
        images[10:],
        TrainSettings(epochs=50, batch_size=2, time_budget_s=0.0),
        reconstruction_objective,
        progress=False,
    )
    assert (cut.stopped, cut.epochs_run) == ("time budget", 1)


def test_build_product_writes_a_bundle_the_daemon_loads(tmp_path: Path) -> None:
    """`inspectd train` end to end on a tiny set: train, export, parity, thresholds, evaluate,
    seal; the daemon's loader accepts the result and the manifest says how it was made."""
    from inspectd.bundle import load_bundle
    from inspectd.synthetic import write_dataset
    from inspectd.train.train_bundle import BuildRequest, build_product

    write_dataset(tmp_path / "data", seed=1, n_train_good=10, n_test_good=3, n_test_per_defect=1)
    out = build_product(
        BuildRequest(
            product="tiny",
            data=tmp_path / "data",
            out=tmp_path / "products" / "tiny",
            params={"input_size": 128, "latent_dim": 16},
            settings=TrainSettings(epochs=2, batch_size=4),
        )
    )
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.preprocess.size == (128, 128) and m.preprocess.source_size == (256, 256)
    assert bundle.thresholds.model_sha256 == bundle.model_sha256
    assert m.training["epochs_run"] == 2 and m.training["torch"].startswith("2.")
    assert 0.0 <= m.metrics["image_auroc"] <= 1.0
    assert len((out / "train_images.sha256").read_text().splitlines()) == 10

    # Deterministic: the same request gives the same weights, whatever used the random
    # generators before in this process (the initial weights are seeded, not only training).
    torch.rand(100)
    again = build_product(
        BuildRequest(
            product="tiny",
            data=tmp_path / "data",
            out=tmp_path / "again" / "tiny",
            params={"input_size": 128, "latent_dim": 16},
            settings=TrainSettings(epochs=2, batch_size=4),
        )
    )
    first = torch.load(out / "model.pt", weights_only=True)
    second = torch.load(again / "model.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)
