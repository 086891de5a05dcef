"""Parity of a backend with ONNX Runtime on sample parts: map difference and verdict agreement.

Offline, beside export and the engine build (inspectd export, build-engine, verify-engine),
never in the daemon: the samples are a folder of the product's images or, without one, freshly
rendered synthetic buttons (good parts and every defect) from the training data sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspectd.decide import rejects
from inspectd.engine.base import Engine, InferenceResult, infer_batches

BATCH = 8


@dataclass
class Disagreement:
    name: str
    reference: str  # OK / NG
    candidate: str
    reference_score: float
    candidate_score: float


@dataclass
class Comparison:
    n: int
    max_map_diff: float
    max_score_diff: float
    image_threshold: float
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return not self.disagreements


def _verdicts(scores: np.ndarray, threshold: float) -> list[str]:
    return ["NG" if r else "OK" for r in rejects(scores, threshold)]


def compare(
    reference: InferenceResult, candidate: InferenceResult, names: list[str], image_threshold: float
) -> Comparison:
    ref_v = _verdicts(reference.score, image_threshold)
    cand_v = _verdicts(candidate.score, image_threshold)
    diffs = [
        Disagreement(n, r, c, float(rs), float(cs))
        for n, r, c, rs, cs in zip(
            names, ref_v, cand_v, reference.score, candidate.score, strict=True
        )
        if r != c
    ]
    map_diff = np.abs(reference.anomaly_map.astype(np.float64) - candidate.anomaly_map)
    score_diff = np.abs(reference.score.astype(np.float64) - candidate.score)
    return Comparison(
        n=len(names),
        # NaN in either counts as the largest difference, not as none
        max_map_diff=float(np.nan_to_num(map_diff, nan=np.inf).max()) if map_diff.size else 0.0,
        max_score_diff=float(np.nan_to_num(score_diff, nan=np.inf).max())
        if score_diff.size
        else 0.0,
        image_threshold=image_threshold,
        disagreements=diffs,
    )


def run_all(engine: Engine, images: np.ndarray) -> InferenceResult:
    return infer_batches(engine, (images[i : i + BATCH] for i in range(0, len(images), BATCH)))


def sample_images(
    bundle: Any, folder: Path | None, n: int = 40, seed: int = 7
) -> tuple[list[str], np.ndarray]:
    """(names, uint8 N x H x W x 3 model inputs): every image under `folder`, or `n` rendered
    buttons, one in three with a defect (every defect type in turn)."""
    from inspectd.preprocess import load_inputs, preprocess

    spec = bundle.manifest.preprocess
    if folder is not None:
        from inspectd.train.datasets.mvtec import image_files

        paths = image_files(folder)
        if not paths:
            raise FileNotFoundError(f"{folder}: no images (.png, .jpg, .bmp, .tif)")
        return [str(p.relative_to(folder)) for p in paths], load_inputs(paths, spec)
    from inspectd.synthetic import DEFECTS, render_part

    names, images = [], []
    for i in range(n):
        defect = DEFECTS[(i // 3) % len(DEFECTS)] if i % 3 == 2 else None
        names.append(f"button-{i:03d}-{defect or 'good'}")
        images.append(preprocess(render_part(seed, i, defect)[0], spec)[0])
    return names, np.stack(images)


def format_comparison(c: Comparison, backend: str) -> str:
    lines = [
        f"{backend} vs onnxruntime on {c.n} parts: max anomaly-map difference "
        f"{c.max_map_diff:.3g}, "
        f"max score difference {c.max_score_diff:.3g} (image threshold {c.image_threshold:.6g})",
    ]
    if c.agree:
        lines.append(f"verdicts: all {c.n} agree")
    else:
        lines.append(
            f"!!! VERDICTS DIFFER on {len(c.disagreements)} of {c.n} parts: this engine "
            f"would not judge parts as the calibrated model does !!!"
        )
        for d in c.disagreements:
            lines.append(
                f"  {d.name}: onnxruntime {d.reference} ({d.reference_score:.6g}), "
                f"{backend} {d.candidate} ({d.candidate_score:.6g})"
            )
    return "\n".join(lines)
