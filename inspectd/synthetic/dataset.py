"""Rendering a part, and writing a data set in MVTec AD layout (`python -m inspectd.synthetic`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from inspectd.synthetic.defects import DEFECT_RENDERERS
from inspectd.synthetic.scene import Scene
from inspectd.synthetic.style import DEFECT_INDEX_STRIDE, DEFECTS, SPLIT_CODES, SPLITS, ButtonStyle

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]  # fixed, so PNG bytes are reproducible


def render_part(
    seed: int,
    index: int,
    defect: str | None = None,
    style: ButtonStyle = ButtonStyle(),
    split: str = "test",
) -> tuple[np.ndarray, np.ndarray]:
    """Photograph part `index` of the product, optionally with a defect.

    Returns (image, mask): image uint8 size x size x 3 BGR; mask uint8 size x size, 255 where
    the defect changed pixels (its coverage dilated by the 1 px blur footprint), all 0 for a good
    part. For the same (seed, split, index, style) the good render and every defect render share
    pose, lighting, texture and sensor noise, and differ only inside the mask.

    `split` ("train" or "test") selects an independent random stream, so training and test parts
    never coincide. seed and index must be non-negative.
    """
    if defect is not None and defect not in DEFECTS:
        raise ValueError(
            f"unknown defect {defect!r}; allowed: {', '.join(DEFECTS)} (or None for a good part)"
        )
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    split_code = SPLIT_CODES[split]
    scene = Scene.sample(np.random.default_rng([seed, split_code, 0, index]), style)
    mask: np.ndarray = np.zeros((style.size, style.size), np.uint8)
    if defect is not None:
        defect_rng = np.random.default_rng([seed, split_code, 1 + DEFECTS.index(defect), index])
        coverage = DEFECT_RENDERERS[defect](scene, defect_rng)
        mask[coverage > 0] = 255
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    image = np.clip(np.rint(scene.compose()), 0, 255).astype(np.uint8)
    return image, mask


def write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image, PNG_PARAMS)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def write_dataset(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train_good: int = 200,
    n_test_good: int = 40,
    n_test_per_defect: int = 10,
    style: ButtonStyle = ButtonStyle(),
) -> dict[str, int]:
    """Write the product as an MVTec AD tree of PNGs and return the file count per folder.

    Layout: train/good/000.png, test/good/000.png, test/<defect>/000.png and
    ground_truth/<defect>/000_mask.png (0/255). Train good parts use the "train" RNG split and
    everything under test/ the "test" split. Defective part NNN of defect k is part index
    (k + 1) * DEFECT_INDEX_STRIDE + NNN, so defective parts are not copies of test/good parts.

    Re-running with the same arguments rewrites identical bytes. Raises FileExistsError if a
    target folder holds PNGs this call would not write (e.g. from a run with larger counts), so
    a data set never silently mixes two runs.
    """
    out_dir = Path(out_dir)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for name, n in (
        ("n_train_good", n_train_good),
        ("n_test_good", n_test_good),
        ("n_test_per_defect", n_test_per_defect),
    ):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    width = max(3, len(str(max(n_train_good, n_test_good, n_test_per_defect, 1) - 1)))

    plan: dict[str, list[str]] = {
        "train/good": [f"{i:0{width}d}.png" for i in range(n_train_good)],
        "test/good": [f"{i:0{width}d}.png" for i in range(n_test_good)],
    }
    for d in DEFECTS:
        plan[f"test/{d}"] = [f"{i:0{width}d}.png" for i in range(n_test_per_defect)]
        plan[f"ground_truth/{d}"] = [f"{i:0{width}d}_mask.png" for i in range(n_test_per_defect)]
    for folder, names in plan.items():
        existing = out_dir / folder
        if existing.is_dir():
            stale = sorted({p.name for p in existing.glob("*.png")} - set(names))
            if stale:
                raise FileExistsError(
                    f"{existing} already holds {len(stale)} PNG(s) this run would not write "
                    f"(e.g. {stale[0]}); remove the folder or write to a new one"
                )
    for folder in plan:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)

    for i, name in enumerate(plan["train/good"]):
        write_png(out_dir / "train/good" / name, render_part(seed, i, None, style, "train")[0])
    for i, name in enumerate(plan["test/good"]):
        write_png(out_dir / "test/good" / name, render_part(seed, i, None, style, "test")[0])
    for k, d in enumerate(DEFECTS):
        for i, name in enumerate(plan[f"test/{d}"]):
            image, mask = render_part(seed, (k + 1) * DEFECT_INDEX_STRIDE + i, d, style, "test")
            write_png(out_dir / f"test/{d}" / name, image)
            write_png(out_dir / f"ground_truth/{d}" / plan[f"ground_truth/{d}"][i], mask)
    return {folder: len(names) for folder, names in plan.items()}


def main(argv: list[str] | None = None) -> int:
    """CLI: write a synthetic button data set in MVTec AD layout; prints the counts as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m inspectd.synthetic",
        description="Write a deterministic synthetic button data set (MVTec AD layout, PNG).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (>= 0)")
    parser.add_argument("--train-good", type=int, default=200, help="good training images")
    parser.add_argument("--test-good", type=int, default=40, help="good test images")
    parser.add_argument("--per-defect", type=int, default=10, help="test images per defect type")
    parser.add_argument("--holes", type=int, choices=(2, 4), default=4, help="holes per button")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (>= 64)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    try:
        style = ButtonStyle(size=args.size, holes=args.holes)
        summary = write_dataset(
            args.out,
            seed=args.seed,
            n_train_good=args.train_good,
            n_test_good=args.test_good,
            n_test_per_defect=args.per_defect,
            style=style,
        )
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    print(json.dumps({"out": str(args.out), "seed": args.seed, "counts": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
