"""Reader for data sets in MVTec AD layout.

    <root>/train/good/*.png                     good parts to train on
    <root>/test/good/*.png                      good parts to evaluate on
    <root>/test/<defect>/*.png                  defective parts, one folder per defect type
    <root>/ground_truth/<defect>/<stem>_mask.png  0/255 pixel mask of test/<defect>/<stem>.*

Images may be png, jpg, jpeg, bmp, tif or tiff (any case). Only numpy and cv2: the calibration
tools use this without torch. Images are read with inspectd.imagefile.read_image, the folder
camera's decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspectd.imagefile import IMAGE_EXTENSIONS

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of the set. `defect` is the folder name ("good" for good parts); `mask_path` is
    the ground-truth mask if one exists (always None for good parts)."""

    path: Path
    defect: str
    mask_path: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.defect != GOOD


def expected_mask_path(image_path: Path, defect: str) -> Path:
    """Where MVTec AD keeps the mask of <root>/test/<defect>/<stem>.<ext> (a PNG)."""
    root = Path(image_path).parent.parent.parent
    return root / "ground_truth" / defect / f"{Path(image_path).stem}_mask.png"


def _images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name; hidden files are skipped."""
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        ),
        key=lambda p: p.name,
    )


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere under `folder`, sorted by path; hidden files are skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _find_mask(root: Path, defect: str, stem: str) -> Path | None:
    folder = root / "ground_truth" / defect
    preferred = folder / f"{stem}_mask.png"
    if preferred.is_file():
        return preferred
    for ext in sorted(IMAGE_EXTENSIONS - {".png"}):
        for candidate in (folder / f"{stem}_mask{ext}", folder / f"{stem}_mask{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _layout(missing: Path) -> str:
    return (
        f"MVTec layout: missing folder {missing} (expected <root>/train/good, "
        f"<root>/test/good, <root>/test/<defect>, <root>/ground_truth/<defect>)"
    )


class MVTecSet:
    """An MVTec AD style data set on disk; the listing is taken once, at construction."""

    def __init__(self, root: Path) -> None:
        """List root's splits. Each is checked when it is used: training needs train/good with
        images (``train_good()``), evaluation a test/ folder with test/good; a set with only a
        test split can be evaluated, one with only train/good trained on (``test()`` is empty).

        Raises FileNotFoundError naming the missing folder (the root, or test/good beside a
        test/ folder). Missing masks are reported only when a mask is loaded, so a set with
        partial annotations can still be used for image-level metrics.
        """
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(_layout(self.root))
        train = self.root / "train" / GOOD
        self._train = [Sample(p, GOOD) for p in _images(train)] if train.is_dir() else None
        self._defects: list[str] = []
        self._test: list[Sample] = []
        if not (self.root / "test").is_dir():
            return
        if not (self.root / "test" / GOOD).is_dir():
            raise FileNotFoundError(_layout(self.root / "test" / GOOD))
        self._defects = sorted(
            p.name
            for p in (self.root / "test").iterdir()
            if p.is_dir() and p.name != GOOD and not p.name.startswith(".")
        )
        test = [Sample(p, GOOD) for p in _images(self.root / "test" / GOOD)]
        for defect in self._defects:
            for p in _images(self.root / "test" / defect):
                test.append(Sample(p, defect, _find_mask(self.root, defect, p.stem)))
        self._test = test

    def __repr__(self) -> str:
        return (
            f"MVTecSet({str(self.root)!r}: {len(self._train or [])} train, {len(self._test)} test, "
            f"defects={self._defects})"
        )

    def train_good(self) -> list[Sample]:
        """Good training samples, sorted by file name; FileNotFoundError without train/good,
        ValueError if it holds no images (nothing to train on)."""
        if self._train is None:
            raise FileNotFoundError(_layout(self.root / "train" / GOOD))
        if not self._train:
            raise ValueError(f"MVTec layout: no images in {self.root / 'train' / GOOD}")
        return list(self._train)

    def test(self) -> list[Sample]:
        """Test samples: test/good first, then each defect type in name order; by file name
        within a folder."""
        return list(self._test)

    def defect_types(self) -> list[str]:
        """Folder names under test/ other than "good", sorted."""
        return list(self._defects)


def load_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """Ground truth of `sample` as bool (height, width) = `shape`.

    Good samples give all False. A mask is read as grey, resized with nearest neighbour if its
    size differs (so it stays binary) and thresholded at > 127. An all-zero mask is valid and
    returned as all False (some real defects are annotated as empty). ValueError if a defect
    sample has no mask (naming the path expected), if the mask cannot be decoded, or if it is
    non-zero but never above 127 (a 0/1-encoded mask, which would otherwise read as empty).
    """
    height, width = int(shape[0]), int(shape[1])
    if not sample.is_anomalous:
        return np.zeros((height, width), bool)
    path = sample.mask_path
    if path is None or not Path(path).is_file():
        expected = path if path is not None else expected_mask_path(sample.path, sample.defect)
        raise ValueError(f"no ground-truth mask for {sample.path}: expected {expected}")
    raw = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise ValueError(f"cannot decode mask {path}")
    peak = int(raw.max())
    if 0 < peak <= 127:
        raise ValueError(
            f"mask {path} has values only up to {peak}; masks must be 0/255 (a 0/1 mask?)"
        )
    if raw.shape != (height, width):
        raw = cv2.resize(raw, (width, height), interpolation=cv2.INTER_NEAREST)
    return raw > 127
