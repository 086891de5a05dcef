"""Reviewed parts are added to a calibration, never made one of their own (issue 35): one
reviewed false reject calibrated alone with --force moved the test bundle's threshold and a
reload applied it. `inspectd calibrate` as a user runs it, on a copy of the test bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from inspectd.bundle import load_bundle
from inspectd.outputs.archive import ARCHIVE_SCHEMA
from inspectd.reviews import ReviewDesk
from inspectd.synthetic import render_part

from support.paths import BUNDLE, LEAN_RUN, REPO, needs_bundle

pytestmark = needs_bundle

N_GOOD = 60
TARGET = "0.05"  # 59 parts needed at 95 % confidence


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good/: 60 fresh good buttons; archive/: one rejected part, reviewed as a false reject."""
    root = tmp_path_factory.mktemp("parts")
    (root / "good").mkdir()
    for i in range(N_GOOD):
        cv2.imwrite(str(root / "good" / f"{i:03d}.png"), render_part(5, i, None)[0])
    day = root / "archive" / "2026-12-07"
    day.mkdir(parents=True)
    stem = "0000000042-p42-NG"
    cv2.imwrite(str(day / f"{stem}.png"), render_part(5, 500, None)[0])
    verdict = {"seq": 42, "part_id": "p42", "verdict": "NG"}
    doc = {"schema": ARCHIVE_SCHEMA, "verdict": verdict, "frame": f"{stem}.png", "map": None}
    (day / f"{stem}.json").write_text(json.dumps(doc))
    ReviewDesk(root / "archive").review({"seq": 42, "part_id": "p42", "label": "false_reject"})
    return root


@pytest.fixture
def products(tmp_path: Path) -> Path:
    shutil.copytree(BUNDLE, tmp_path / "products" / "button")
    return tmp_path / "products"


def calibrate(products: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LEAN_RUN, "calibrate", "--product", "button"]
        + ["--products", str(products), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )


def n_good(products: Path) -> int:
    """The active version's (calibrate writes a new version of the product)."""
    return load_bundle(products / "button").thresholds.n_good


def test_reviewed_parts_alone_are_refused_even_with_force(parts: Path, products: Path) -> None:
    before = (products / "button" / "thresholds.yaml").read_bytes()
    reviewed = parts / "archive" / "reviews" / "false_reject"
    proc = calibrate(products, "--images", str(reviewed), "--force")
    assert proc.returncode == 2, proc.stdout  # before: 0, n_good 1, the threshold moved
    assert "all 1 images in" in proc.stderr and "are reviewed parts" in proc.stderr
    assert f"--images GOOD --images {reviewed}" in proc.stderr
    assert (products / "button" / "thresholds.yaml").read_bytes() == before


def test_reviewed_parts_are_added_to_the_good_parts_each_once(parts: Path, products: Path) -> None:
    reviewed = parts / "archive" / "reviews" / "false_reject"
    proc = calibrate(
        products, "--images", str(parts / "good"), "--images", str(reviewed), "--target-frr", TARGET
    )
    assert proc.returncode == 0, proc.stderr  # before: only the last --images counted
    assert n_good(products) == N_GOOD + 1
    # the archive holds the same frame (the review is a hard link of it): counted once
    proc = calibrate(
        products,
        *("--images", str(parts / "good"), "--images", str(reviewed)),
        *("--images", str(parts / "archive"), "--target-frr", TARGET),
    )
    assert proc.returncode == 0, proc.stderr
    assert n_good(products) == N_GOOD + 1


def test_fewer_parts_than_the_bundle_s_calibration_replace_it_only_when_asked(
    parts: Path, products: Path, tmp_path: Path
) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((parts / "good").glob("*.png"))[:10]:
        shutil.copy(p, few / p.name)
    proc = calibrate(products, "--images", str(few), "--force")
    assert proc.returncode == 2  # before: 0, a 50-part calibration replaced by 10 parts
    assert "10 good parts would replace the calibration of button from 50" in proc.stderr
    assert n_good(products) == 50
    proc = calibrate(products, "--images", str(few), "--force", "--replace")
    assert proc.returncode == 0, proc.stderr
    assert n_good(products) == 10
