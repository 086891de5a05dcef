"""Product bundles: sealed, verified on load, refused when tampered with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inspectd.bundle import BUNDLE_SCHEMA, BundleError, load_bundle, sha256_of  # noqa: E402
from inspectd.bundle_seal import replace_thresholds, seal, write_thresholds  # noqa: E402
from inspectd.calibrate.thresholds import max_of_good  # noqa: E402
from inspectd.deploy.export import OPSET, export_onnx  # noqa: E402
from inspectd.engine.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from inspectd.models.ae import ConvAutoencoder  # noqa: E402
from inspectd.models.graph import InspectionGraph  # noqa: E402


def make_bundle(root: Path) -> Path:
    out = root / "widget"
    torch.manual_seed(0)
    onnx_path = export_onnx(
        InspectionGraph(ConvAutoencoder(latent_dim=8)), out / "model.onnx", (128, 128)
    )
    images = np.random.default_rng(1).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
    r = OnnxRuntimeEngine(onnx_path).infer(images)
    write_thresholds(out, max_of_good(r.score, r.anomaly_map, sha256_of(onnx_path)))
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "name": "widget",
        "created": "2026-11-23T00:00:00+00:00",
        "tool_version": "test",
        "model": {
            "family": "ae",
            "file": "model.onnx",
            "opset": OPSET,
            "params": {"latent_dim": 8},
        },
        "preprocess": {"size": [128, 128]},
        "scoring": {"method": "msgms_l2"},
    }
    seal(out, manifest, ["model.onnx", "thresholds.yaml"])
    return out


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("products"))


def copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_sealed_bundle_loads_with_its_hashes(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.name == "widget"
    assert b.model_sha256 == sha256_of(bundle_dir / "model.onnx")
    assert b.thresholds.model_sha256 == b.model_sha256
    assert b.thresholds.n_good == 4
    assert b.manifest.preprocess.size == (128, 128)


def test_a_bundle_in_a_folder_of_another_name_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    # stations, the product command and reloads find bundles by name
    b = copy_bundle(bundle_dir, tmp_path / "gadget")
    with pytest.raises(BundleError, match="name 'widget' does not match its folder 'gadget'"):
        load_bundle(b)


def test_tampered_model_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    b = copy_bundle(bundle_dir, tmp_path / "widget")
    data = bytearray((b / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx: sha256 .* does not match the manifest"):
        load_bundle(b)


def test_edited_thresholds_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    b = copy_bundle(bundle_dir, tmp_path / "widget")
    text = (b / "thresholds.yaml").read_text()
    (b / "thresholds.yaml").write_text(text.replace("image:", "image: 0.0 #", 1))
    with pytest.raises(BundleError, match="thresholds.yaml: sha256"):
        load_bundle(b)


def test_thresholds_for_another_model_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    b = copy_bundle(bundle_dir, tmp_path / "widget")
    good = load_bundle(b)
    t = good.thresholds.model_copy(update={"model_sha256": "0" * 64})
    replace_thresholds(b, t)
    with pytest.raises(BundleError, match="made for model 000000000000.*recalibrate"):
        load_bundle(b)


def test_missing_file_and_missing_manifest(bundle_dir: Path, tmp_path: Path) -> None:
    b = copy_bundle(bundle_dir, tmp_path / "widget")
    (b / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx: missing"):
        load_bundle(b)
    with pytest.raises(BundleError, match="not a product bundle"):
        load_bundle(tmp_path)


def test_manifest_typo_names_file_line_and_key(bundle_dir: Path, tmp_path: Path) -> None:
    b = copy_bundle(bundle_dir, tmp_path / "widget")
    text = (b / "manifest.yaml").read_text().replace("family: ae", "family: aee")
    (b / "manifest.yaml").write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "family:" in s)
    with pytest.raises(
        BundleError, match=rf"manifest.yaml:{line}:\d+ model.family: 'aee' is not one of"
    ):
        load_bundle(b)
