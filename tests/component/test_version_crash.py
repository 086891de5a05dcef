"""`inspectd calibrate` writes a new version of the product (issue 34), and a writer killed
with SIGKILL at any step of it leaves the previous active version loadable and no half-written
version visible. The writer is the real command in its own process, stopped at a step by
inspectd.versions.layout.on_step and killed there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from inspectd.bundle import load_bundle, sha256_of
from inspectd.synthetic import render_part, write_png
from inspectd.versions import layout
from inspectd.versions.store import STEPS

from support.paths import REPO, needs_bundle
from support.products import copy_bundle

pytestmark = needs_bundle

N_GOOD = 30

# The CLI in a child that stops at step argv[1] (writing argv[2] first, so the test knows)
# and waits there to be killed.
STOPPED_AT = """
import sys, time
from pathlib import Path
from inspectd.versions import layout

def stop(step):
    if step == sys.argv[1]:
        Path(sys.argv[2]).write_text(step)
        time.sleep(120)

layout.on_step = stop
from inspectd.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    for i in range(N_GOOD):
        write_png(folder / f"{i:03d}.png", render_part(3, 40_000 + i, None)[0])
    return folder


@pytest.fixture
def product(tmp_path: Path) -> Path:
    return copy_bundle(tmp_path / "products", "button")


def calibrate_args(product: Path, good: Path) -> list[str]:
    # the tests' bundle was calibrated from 50 parts: --replace; 30 parts: --force
    return [
        "calibrate",
        "--product",
        product.name,
        "--products",
        str(product.parent),
        "--images",
        str(good),
        "--target-frr",
        "0.05",
        "--force",
        "--replace",
        "--by",
        "carol",
    ]


def calibrate(product: Path, good: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inspectd", *calibrate_args(product, good)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_calibrate_writes_a_new_active_version_and_leaves_the_old_one(product, good) -> None:
    before = {p.name: sha256_of(p) for p in product.iterdir() if p.is_file()}
    v1 = load_bundle(product)
    proc = calibrate(product, good)
    assert proc.returncode == 0, proc.stderr[-3000:]

    v2 = load_bundle(product)
    assert v2.version == 2 and v2.path == product / "versions" / "2"
    assert {p.name: sha256_of(p) for p in product.iterdir() if p.is_file()} == before
    assert v2.model_sha256 == v1.model_sha256 and v2.thresholds.n_good == N_GOOD
    # the terminal says what it did, as before, and which version that is
    assert f"image threshold {v2.thresholds.image:.6g}" in proc.stdout
    assert f"wrote {v2.path / 'calibration.png'}, {v2.path / 'calibration.md'}, " in proc.stdout
    assert "version 2 of button (from version 1) is now active" in proc.stdout
    # provenance: who, from which parts (each file's sha256), the report's figures, the parent
    record = v2.manifest.version
    assert record is not None
    assert (record.parent, record.origin, record.by, record.parts) == (1, "calibrate", "carol", 30)
    lines = (v2.path / "parts.sha256").read_text().splitlines()
    assert lines[0] == f"{sha256_of(good / '000.png')}  good  {good / '000.png'}"
    assert len(lines) == N_GOOD
    figures = record.figures
    assert figures["image_threshold"] == v2.thresholds.image and figures["n_good"] == N_GOOD
    assert figures["frr_bound"] == v2.thresholds.frr_bound and figures["target_frr"] == 0.05
    # the report is part of the sealed version
    assert {"calibration.png", "calibration.md", "parts.sha256"} <= set(v2.manifest.files)

    # calibrating again calibrates the active version: version 3, made from 2
    assert calibrate(product, good).returncode == 0
    v3 = load_bundle(product)
    assert v3.version == 3 and v3.manifest.version and v3.manifest.version.parent == 2


@pytest.mark.parametrize("step", STEPS)
def test_a_writer_killed_at_any_step_leaves_a_loadable_product(product, good, tmp_path, step):
    v1 = load_bundle(product)
    marker = tmp_path / "stopped"
    child = subprocess.Popen(
        [sys.executable, "-c", STOPPED_AT, step, str(marker), *calibrate_args(product, good)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"the writer never reached {step}"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()  # type: ignore[union-attr]

    # what the next loader (a station starting now) finds
    bundle = load_bundle(product)
    published = STEPS.index(step) >= STEPS.index("published")
    assert layout.version_ids(product) == ([1, 2] if published else [1])
    if step == "activated":  # killed after the switch: the new version, complete
        assert bundle.version == 2 and bundle.thresholds.n_good == N_GOOD
    else:
        assert bundle.version == 1 and bundle.thresholds == v1.thresholds
    assert bundle.model_sha256 == v1.model_sha256
    if published:
        assert load_bundle(product, 2).thresholds.n_good == N_GOOD  # complete, only not active
    pointer = product / "versions" / "active.yaml"
    if step == "pointer_written":  # the new pointer was written beside the old, not over it
        assert not pointer.exists() and list(pointer.parent.glob(".active.yaml.*.tmp"))
    if step in ("staged", "sealed"):
        assert [p.name for p in (product / "versions").glob(".new-*")] == [".new-2"]

    # the next writer removes what was left and writes the next version
    proc = calibrate(product, good)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = load_bundle(product)
    assert after.version == (3 if published else 2)
    assert not [p.name for p in (product / "versions").iterdir() if p.name.startswith(".new-")]
    assert not list((product / "versions").glob(".active.yaml.*"))
    assert yaml.safe_load(pointer.read_text())["version"] == after.version
