"""`inspectd calibrate` on synthetic buttons with the demo bundle (real ONNX Runtime)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import stats as sps

from inspectd.bundle import load_bundle, sha256_of
from inspectd.bundle_seal import replace_thresholds
from inspectd.engine import load_engine
from inspectd.preprocess import load_inputs
from inspectd.synthetic import DEFECTS, render_part, write_png

from support.daemon_process import Daemon
from support.paths import BUNDLE, LEAN_RUN, REPO, needs_bundle
from support.station import station_config, station_dict

N_GOOD = 300
TARGET = 0.02  # 300 parts are enough for it (149 needed); not for 0.001 (2995)

pytestmark = needs_bundle


def write_good(folder: Path, start: int, count: int, seed: int = 3) -> list[Path]:
    """New good buttons (the test split: never the training images)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        paths.append(folder / f"{i:05d}.png")
        write_png(paths[-1], render_part(seed, i, None)[0])
    return paths


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    write_good(folder, 0, N_GOOD)
    return folder


@pytest.fixture
def products(tmp_path) -> Path:
    shutil.copytree(BUNDLE, tmp_path / "products" / "button")
    return tmp_path / "products"


def calibrate(products: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # LEAN_RUN: exit 99 if torch was imported (calibrate runs on the box, without torch)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            LEAN_RUN,
            "calibrate",
            "--product",
            "button",
            "--products",
            str(products),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )


def scores_of(bundle_dir: Path, paths: list[Path]) -> np.ndarray:
    bundle = load_bundle(bundle_dir)
    engine = load_engine(bundle.model_path)
    x = load_inputs(paths, bundle.manifest.preprocess)
    return np.concatenate([engine.infer(x[i : i + 32]).score for i in range(0, len(x), 32)])


def test_thresholds_from_good_parts_hold_their_false_reject_rate(good, products, tmp_path):
    before = (products / "button" / "thresholds.yaml").read_bytes()
    proc = calibrate(products, "--images", str(good), "--target-frr", str(TARGET))
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = load_bundle(products / "button")  # a new version, sealed: the daemon accepts it
    t = bundle.thresholds
    assert bundle.version == 2 and (bundle.path / "thresholds.yaml").read_bytes() != before
    assert (products / "button" / "thresholds.yaml").read_bytes() == before  # version 1 kept
    assert t.n_good == N_GOOD and t.target_frr == TARGET and t.confidence == 0.95
    assert t.frr_bound is not None and t.frr_bound <= TARGET
    assert t.model_sha256 == bundle.model_sha256 and t.method.startswith("order statistic")
    assert set(t.quantiles) >= {"p10", "p50", "p90", "p99", "max"} and t.tool_version
    assert {"order_statistic", "tail_fit", "tail_fit_upper"} <= set(t.alternatives)
    assert t.pixel <= t.image
    # the terminal says the threshold and its bound
    assert f"image threshold {t.image:.6g}" in proc.stdout
    assert f"false-reject rate <= {t.frr_bound:.4g} with 95% confidence" in proc.stdout

    # on the calibration parts it rejects exactly the ones the order statistic allows ...
    calib = scores_of(products / "button", sorted(good.glob("*.png")))
    allowed = [j for j in range(N_GOOD) if sps.binom.cdf(j, N_GOOD, TARGET) <= 0.05][-1]
    assert int((calib >= t.image).sum()) == allowed
    # ... and on 600 other good parts its false-reject rate is consistent with the target
    fresh = scores_of(products / "button", write_good(tmp_path / "fresh", 10_000, 600))
    rejected = int((fresh >= t.image).sum())
    assert rejected <= sps.binom.ppf(0.999, 600, TARGET), (rejected, t.image)

    # the report: a PNG of the documented size and the Markdown that links it
    png = cv2.imread(str(bundle.path / "calibration.png"))
    assert png is not None and png.shape == (960, 1600, 3)
    md = (bundle.path / "calibration.md").read_text()
    assert f"| image threshold | {t.image:.6g} |" in md and "![calibration](calibration.png)" in md


def test_too_few_parts_are_refused_with_the_number_needed(good, products):
    before = (products / "button" / "thresholds.yaml").read_bytes()
    proc = calibrate(products, "--images", str(good))  # default target 0.001
    assert proc.returncode == 2
    assert "needs at least 2995 good parts; got 300" in proc.stderr
    assert "--force" in proc.stderr
    assert (products / "button" / "thresholds.yaml").read_bytes() == before  # untouched

    proc = calibrate(products, "--images", str(good), "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = load_bundle(products / "button").thresholds
    assert t.frr_bound == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-3)
    assert t.image > scores_of(products / "button", sorted(good.glob("*.png"))).max()
    assert "2995 good parts are needed for the target" in proc.stdout


def test_images_the_model_was_trained_on_are_refused_or_left_out(good, products, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(good, folder)
    for i in (0, 7, 42):  # the demo bundle's training images, byte for byte
        write_png(folder / f"train_{i}.png", render_part(0, i, None, split="train")[0])
    proc = calibrate(products, "--images", str(folder), "--target-frr", str(TARGET))
    assert proc.returncode == 2
    assert f"3 of {N_GOOD + 3} images in {folder} were used to train this model" in proc.stderr
    proc = calibrate(
        products, "--images", str(folder), "--target-frr", str(TARGET), "--drop-training"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(3 training images left out)" in proc.stdout
    assert load_bundle(products / "button").thresholds.n_good == N_GOOD


def test_defects_give_recall_f1_and_a_roc(good, products, tmp_path):
    data = tmp_path / "defects"
    for k, d in enumerate(DEFECTS):
        (data / "test" / d).mkdir(parents=True)
        (data / "ground_truth" / d).mkdir(parents=True)
        for i in range(3):
            image, mask = render_part(3, 20_000 + 100 * k + i, d)
            write_png(data / "test" / d / f"{i:03d}.png", image)
            write_png(data / "ground_truth" / d / f"{i:03d}_mask.png", mask)
    proc = calibrate(
        products, "--images", str(good), "--target-frr", str(TARGET), "--defects", str(data)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = load_bundle(products / "button").thresholds
    defect_scores = scores_of(products / "button", sorted((data / "test").rglob("*.png")))
    recall = (defect_scores >= t.image).mean()
    assert f"defects: {3 * len(DEFECTS)}, recall {recall:.1%} at the threshold" in proc.stdout
    assert "pixel AUROC" in proc.stdout and "f1_optimal" in t.alternatives
    md = (load_bundle(products / "button").path / "calibration.md").read_text()
    assert "| recall at the threshold |" in md and "| pixel AUROC |" in md
    assert all(f"| {d} |" in md for d in DEFECTS)
    # recall at 1 % FRR of the 300 good parts: 3 of them may be rejected, no more
    good_scores = np.sort(scores_of(products / "button", sorted(good.rglob("*.png"))))[::-1]
    at_1pct = (defect_scores > good_scores[3]).mean()
    assert f"| recall @ 1.0% FRR of these good parts | {at_1pct:.1%} (threshold" in md
    assert "| recall @ 0.1% FRR of these good parts | n too small (300 good < 1000) |" in md


def test_good_parts_live_from_the_station_camera(good, products, tmp_path):
    config = station_config(tmp_path, products_dir=products, camera={"path": good})
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LEAN_RUN,
            "calibrate",
            "--product",
            "button",
            "--config",
            str(config),
            "--count",
            "200",
            "--target-frr",
            str(TARGET),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = load_bundle(products / "button").thresholds  # the config's products_dir
    assert t.n_good == 200 and t.frr_bound <= TARGET


def test_a_running_daemon_takes_new_thresholds_on_sighup_and_refuses_another_models(
    good, products, tmp_path
):
    frames = tmp_path / "frames"
    write_good(frames, 50_000, 3)
    config = station_config(tmp_path, products_dir=products, camera={"loop": True, "rate_hz": 5})
    with Daemon(config) as daemon:
        daemon.wait_event("station.started", timeout=60)
        proc = calibrate(products, "--images", str(good), "--target-frr", str(TARGET))
        assert proc.returncode == 0, proc.stderr[-3000:]
        new = load_bundle(products / "button").thresholds.image
        daemon.signal(signal.SIGHUP)
        reloaded = daemon.wait_event("thresholds.reloaded", timeout=30)[0]
        assert reloaded["image"] == new and reloaded["version"] == 2

        # thresholds made for another model: refused, the running ones stay
        thresholds = load_bundle(products / "button").thresholds.model_copy(
            update={"model_sha256": "0" * 64}
        )
        replace_thresholds(load_bundle(products / "button").path, thresholds)  # the active one
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not any("made for model 000000000000" in line for line in daemon.lines):
            assert time.monotonic() < deadline, daemon.tail()
            time.sleep(0.2)
        assert daemon.running
        assert len(daemon.events("thresholds.reloaded")) == 1
        assert daemon.terminate(timeout=30) == 0, daemon.tail()
    assert sha256_of(products / "button" / "thresholds.yaml")  # the file is still there


@pytest.mark.parametrize("brighten", [0, 30])
def test_drift_is_raised_when_the_good_parts_are_brightened(good, products, tmp_path, brighten):
    from inspectd.config import StationConfig
    from inspectd.service.station import Station

    assert calibrate(products, "--images", str(good), "--target-frr", str(TARGET)).returncode == 0
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(150):  # new good parts; the light got brighter by `brighten` grey levels
        image = render_part(3, 30_000 + i, None)[0].astype(np.int16) + brighten
        write_png(frames / f"{i:04d}.png", np.clip(image, 0, 255).astype(np.uint8))
    window = {"window": 150, "min_parts": 100}
    config = StationConfig.model_validate(
        station_dict(tmp_path, products_dir=products, output=None, drift=window)
    )
    station = Station(config)
    station.start()
    try:
        stats = station.run()
        health = station.health_snapshot()
    finally:
        station.stop()
    assert sum(stats.verdicts.values()) == 150
    drift = health["drift"]
    if brighten:
        assert drift["state"] == "drift", drift
        assert health["state"] == "degraded"
        assert any(
            p.startswith("drift: ") and "above calibration's p50" in p for p in health["problems"]
        )
    else:
        assert drift["state"] == "ok", drift
        assert not any(p.startswith("drift") for p in health["problems"])


def test_defect_folders_with_and_without_masks(tmp_path):
    from inspectd.calibrate.calibration import CalibrationError, defect_samples

    image = render_part(3, 1, "crack")[0]
    plain = tmp_path / "plain"
    plain.mkdir()
    write_png(plain / "a.png", image)
    assert [(s.defect, s.mask_path) for s in defect_samples(plain)] == [("defect", None)]

    root = tmp_path / "mvtec"
    for folder in ("test/good", "test/crack", "test/stain", "ground_truth/crack"):
        (root / folder).mkdir(parents=True)
    write_png(root / "test/good/000.png", image)  # a good part: not a defect
    write_png(root / "test/crack/000.png", image)
    write_png(root / "test/stain/000.png", image)  # no mask for this one
    write_png(root / "ground_truth/crack/000_mask.png", np.zeros((256, 256), np.uint8))
    found = {(s.defect, s.mask_path is not None) for s in defect_samples(root)}
    assert found == {("crack", True), ("stain", False)}
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no defect images"):
        defect_samples(tmp_path / "empty")
    with pytest.raises(CalibrationError, match="no such folder"):
        defect_samples(tmp_path / "missing")
