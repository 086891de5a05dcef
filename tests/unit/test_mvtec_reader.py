"""The MVTec AD layout reader, on a generated button set and on real shared data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.imagefile import read_image
from inspectd.preprocess import PreprocessSpec, load_inputs
from inspectd.synthetic import DEFECTS, write_dataset
from inspectd.train.datasets.mvtec import MVTecSet, Sample, load_mask

from support.paths import REPO

# The team's shared data (not part of the repo): ../shared/data beside the checkout, or wherever
# INSPECTD_SHARED_DATA points.
SHARED = REPO.parent / "shared" / "data"
REAL = Path(os.environ.get("INSPECTD_SHARED_DATA", SHARED)) / "mtoc_lenses"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("button")
    write_dataset(root, seed=0, n_train_good=3, n_test_good=2, n_test_per_defect=2)
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_generated_set_labels_order_and_masks(generated: Path) -> None:
    data = MVTecSet(generated)
    assert data.defect_types() == sorted(DEFECTS)
    train = data.train_good()
    assert [s.path.name for s in train] == ["000.png", "001.png", "002.png"]
    assert all(not s.is_anomalous and s.mask_path is None for s in train)

    test = data.test()
    assert [s.defect for s in test] == ["good"] * 2 + [d for d in sorted(DEFECTS) for _ in (0, 1)]
    assert [s.path.name for s in test[:4]] == ["000.png", "001.png", "000.png", "001.png"]
    for sample in test:
        image = read_image(sample.path)
        assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
        mask = load_mask(sample, image.shape[:2])
        assert mask.dtype == bool and mask.shape == (256, 256)
        if sample.is_anomalous:
            assert sample.mask_path == (
                generated / "ground_truth" / sample.defect / f"{sample.path.stem}_mask.png"
            )
            raw = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(mask, raw > 127) and mask.any()
        else:
            assert sample.mask_path is None and not mask.any()


def test_mask_is_resized_with_nearest_neighbour(generated: Path) -> None:
    sample = next(s for s in MVTecSet(generated).test() if s.defect == "stain")
    full = load_mask(sample, (256, 256))
    half = load_mask(sample, (128, 96))
    assert half.shape == (128, 96) and half.dtype == bool
    expected = cv2.resize(full.astype(np.uint8), (96, 128), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(half, expected.astype(bool))
    good = MVTecSet(generated).test()[0]
    assert not load_mask(good, (10, 20)).any() and load_mask(good, (10, 20)).shape == (10, 20)


def test_empty_mask_is_valid_and_all_false(generated: Path, tmp_path: Path) -> None:
    root = _copy(generated, tmp_path / "set")
    cv2.imwrite(str(root / "ground_truth/crack/000_mask.png"), np.zeros((256, 256), np.uint8))
    sample = next(s for s in MVTecSet(root).test() if s.defect == "crack")
    mask = load_mask(sample, (256, 256))
    assert mask.shape == (256, 256) and not mask.any()


def test_zero_one_mask_is_rejected_not_read_as_empty(generated: Path, tmp_path: Path) -> None:
    root = _copy(generated, tmp_path / "set")
    path = root / "ground_truth/crack/000_mask.png"
    cv2.imwrite(str(path), (cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8))
    sample = next(s for s in MVTecSet(root).test() if s.defect == "crack")
    with pytest.raises(ValueError, match="0/255"):
        load_mask(sample, (256, 256))


def test_missing_mask_names_the_expected_path(generated: Path, tmp_path: Path) -> None:
    root = _copy(generated, tmp_path / "set")
    gone = root / "ground_truth/thread/001_mask.png"
    gone.unlink()
    sample = next(
        s for s in MVTecSet(root).test() if s.path.name == "001.png" and s.defect == "thread"
    )
    assert sample.mask_path is None and sample.is_anomalous
    with pytest.raises(ValueError) as info:
        load_mask(sample, (256, 256))
    assert str(gone) in str(info.value)


def test_other_extensions_and_junk_files(generated: Path, tmp_path: Path) -> None:
    root = _copy(generated, tmp_path / "set")
    image = cv2.imread(str(root / "test/scratch/000.png"))
    cv2.imwrite(str(root / "test/scratch/002.BMP"), image)
    shutil.copy(
        root / "ground_truth/scratch/000_mask.png", root / "ground_truth/scratch/002_mask.png"
    )
    (root / "test/scratch/notes.txt").write_text("not an image")
    (root / "train/good/.DS_Store").write_bytes(b"\0")
    data = MVTecSet(root)
    assert len(data.train_good()) == 3
    scratch = [s for s in data.test() if s.defect == "scratch"]
    assert [s.path.name for s in scratch] == ["000.png", "001.png", "002.BMP"]
    assert read_image(scratch[2].path).shape == (256, 256, 3)
    assert load_mask(scratch[2], (256, 256)).any()


def test_missing_folders_are_named_when_the_split_is_used(generated: Path, tmp_path: Path) -> None:
    root = _copy(generated, tmp_path / "set")
    shutil.rmtree(root / "test/good")
    with pytest.raises(FileNotFoundError) as info:
        MVTecSet(root)  # a test split without its good parts is malformed
    assert str(root / "test/good") in str(info.value)

    root = _copy(generated, tmp_path / "eval-only")
    shutil.rmtree(root / "train")
    data = MVTecSet(root)  # evaluation needs no training images
    assert len(data.test()) == len(MVTecSet(generated).test())
    with pytest.raises(FileNotFoundError) as info:
        data.train_good()
    assert str(root / "train/good") in str(info.value)

    root = _copy(generated, tmp_path / "train-only")
    shutil.rmtree(root / "test")
    shutil.rmtree(root / "ground_truth")
    data = MVTecSet(root)
    assert data.test() == [] and data.defect_types() == [] and data.train_good()


def test_missing_root_and_empty_train(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MVTecSet(tmp_path / "nowhere")
    (tmp_path / "empty/train/good").mkdir(parents=True)
    (tmp_path / "empty/test/good").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        MVTecSet(tmp_path / "empty").train_good()


def test_read_image_errors_name_the_path(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="junk.png"):
        read_image(junk)
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_image(tmp_path / "absent.png")


def test_grey_images_read_as_stored_and_preprocess_expands_them(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    cv2.imwrite(str(path), np.full((5, 7), 100, np.uint8))
    assert read_image(path).shape == (5, 7)  # as the folder camera delivers it
    inputs = load_inputs([path], PreprocessSpec(size=(4, 6)))
    assert inputs.shape == (1, 4, 6, 3) and (inputs == 100).all()


def test_sample_label() -> None:
    assert Sample(Path("a.png"), "crack", Path("m.png")).is_anomalous
    assert not Sample(Path("a.png"), "good", None).is_anomalous


@pytest.mark.skipif(not REAL.is_dir(), reason=f"shared data set {REAL} is not present")
def test_real_mtoc_lenses() -> None:
    data = MVTecSet(REAL)
    assert data.defect_types() == ["defect"]
    train, test = data.train_good(), data.test()
    assert len(train) > 0 and all(not s.is_anomalous for s in train)
    goods = [s for s in test if not s.is_anomalous]
    defects = [s for s in test if s.is_anomalous]
    assert goods and defects and test == goods + defects
    assert [s.path.name for s in defects] == sorted(s.path.name for s in defects)
    empty = 0
    for sample in defects:
        assert sample.mask_path is not None, sample.path
        image = read_image(sample.path)
        mask = load_mask(sample, image.shape[:2])
        assert mask.shape == image.shape[:2] and mask.dtype == bool
        raw = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
        if raw.max() == 0:
            empty += 1
            assert not mask.any()
        else:
            assert mask.any()
    # the shared copy has empty masks (annotated defects with no marked pixels); they must load
    assert empty > 0
    sample = goods[0]
    assert not load_mask(sample, read_image(sample.path).shape[:2]).any()


def test_train_on_a_set_without_training_images_is_a_clear_error(
    generated: Path, tmp_path: Path, capsys
) -> None:
    from inspectd.cli import main

    root = _copy(generated, tmp_path / "eval-only")
    shutil.rmtree(root / "train")
    rc = main(
        [
            "train",
            "--product",
            "p",
            "--data",
            str(root),
            "--products",
            str(tmp_path / "out"),
            "--model",
            "ae",
            "--epochs",
            "1",
        ]
    )
    assert rc == 2
    assert f"missing folder {root / 'train/good'}" in capsys.readouterr().err
