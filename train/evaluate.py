"""Evaluate an engine on an MVTec-layout test set: image AUROC, pixel AUROC, AUPRO (to 30 % FPR,
normalised), image F1-max, the bundle threshold's recall and false rejects; overall and per
defect type (each type against all good test images). numpy and cv2 only: `inspectd eval`
runs this through the daemon's own engine without importing torch.

Undefined metrics (a class absent, a defect type whose masks are all empty, masks missing) are
None, so the JSON, the manifest and the Markdown table all show them as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from inspectd.accuracy import aupro, auroc, f1_max, operating_points, recall_at_points
from inspectd.accuracy import rounded as _r
from inspectd.decide import rejects
from inspectd.engine.base import Engine, infer_batches
from inspectd.preprocess import PreprocessSpec, load_inputs
from inspectd.train.datasets.mvtec import MVTecSet, Sample, load_mask

AUPRO_FPR_LIMIT = 0.3


def score_samples(
    engine: Engine,
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    batch: int = 16,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores N, maps N x H x W float32) of `samples`, read and scored batch by batch."""
    from tqdm import tqdm

    starts = tqdm(
        range(0, len(samples), batch), desc="eval", unit="batch", disable=not progress, leave=False
    )
    r = infer_batches(
        engine,
        (load_inputs([s.path for s in samples[i : i + batch]], spec) for i in starts),
        total=len(samples),
    )
    return r.score, r.anomaly_map


def evaluate(
    engine: Engine,
    dataset: MVTecSet,
    spec: PreprocessSpec,
    image_threshold: float,
    batch: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Score dataset.test() with `engine` and compute the metrics (see `compute_metrics`).
    ValueError when there are no test images or a mask cannot be read."""
    samples = dataset.test()
    if not samples:
        raise ValueError(f"{dataset.root}: no test images (test/good, test/<defect>)")
    scores, maps = score_samples(engine, samples, spec, batch, progress)
    masks, has_mask = test_masks(samples, spec, maps.shape[1:])
    return compute_metrics(
        [s.defect for s in samples], scores, maps, masks, image_threshold, has_mask
    )


def compute_metrics(
    defects: Sequence[str],
    scores: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    image_threshold: float,
    has_mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of a scored test set. defects[i] is "good" or the defect type of image i;
    masks are bool N x H x W like maps; has_mask[i] False marks a defect image without ground
    truth (pixel metrics of any subset holding one are None).

    Keys: test_images, good_images, defects (defective images), image_auroc, pixel_auroc,
    aupro, image_f1_max, image_f1_threshold, image_threshold, defects_found, recall,
    good_rejected, false_reject_rate, empty_masks, missing_masks, and per_defect: {type:
    {images, image_auroc, pixel_auroc, aupro, defects_found, recall}}.
    """
    kind = np.asarray(defects)
    labels = kind != "good"
    good = ~labels
    scores = np.asarray(scores).ravel()
    has_mask = np.ones(len(kind), bool) if has_mask is None else np.asarray(has_mask, bool)
    ng = rejects(scores, image_threshold)  # the daemon's rule (NG or ERROR)

    def pixel(keep: np.ndarray) -> tuple[float | None, float | None]:
        if not has_mask[keep].all():
            return None, None
        # boolean indexing copies; a mask of all images is used as it is
        m, a = (masks, maps) if keep.all() else (masks[keep], maps[keep])
        return _r(auroc(m, a)), _r(aupro(m, a, AUPRO_FPR_LIMIT))

    n_good, n_def = int(good.sum()), int(labels.sum())
    pix_auroc, pro = pixel(np.ones(len(kind), bool))
    f1, f1_threshold = f1_max(labels, scores)
    points = operating_points(labels, scores) if n_good else {}
    per_defect = {}
    for d in sorted(set(kind[labels].tolist())):
        this = kind == d
        d_auroc, d_pro = pixel(good | this)
        per_defect[d] = {
            # at the thresholds of the whole set (all good test parts), as a line would run
            "recall_at_frr": {k: _r(r) for k, r in recall_at_points(points, scores[this]).items()},
            "images": int(this.sum()),
            "image_auroc": _r(auroc(labels[good | this], scores[good | this])),
            "pixel_auroc": d_auroc,
            "aupro": d_pro,
            "defects_found": int((ng & this).sum()),
            "recall": _r((ng & this).sum() / this.sum()),
        }
    empty = labels & has_mask & ~masks.reshape(len(kind), -1).any(axis=1)
    return {
        "test_images": len(kind),
        "good_images": n_good,
        "defects": n_def,
        "image_auroc": _r(auroc(labels, scores)),
        "pixel_auroc": pix_auroc,
        "aupro": pro,
        "aupro_fpr_limit": AUPRO_FPR_LIMIT,
        "recall_at_frr": points,
        "image_f1_max": _r(f1),
        "image_f1_threshold": None if math.isnan(f1_threshold) else f1_threshold,  # exact: reusable
        "image_threshold": float(image_threshold),
        "defects_found": int((ng & labels).sum()),
        "recall": _r((ng & labels).sum() / n_def) if n_def else None,
        "good_rejected": int((ng & good).sum()),
        "false_reject_rate": _r((ng & good).sum() / n_good) if n_good else None,
        "empty_masks": int(empty.sum()),
        "missing_masks": int((labels & ~has_mask).sum()),
        "per_defect": per_defect,
    }


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def to_markdown(result: dict[str, Any], title: str | None = None) -> str:
    """A Markdown table of `result` (from evaluate): one row per defect type (against all good
    test images), one for the whole set, then F1-max and what the bundle threshold does."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| defect type | images | recall @ 1 % FRR | recall @ 0.1 % FRR | image AUROC "
        "| pixel AUROC | AUPRO | found at threshold |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d, m in result["per_defect"].items():
        at = m.get("recall_at_frr", {})
        lines.append(
            f"| {d} | {m['images']} | {_pct(at.get('0.01'))} | {_pct(at.get('0.001'))} "
            f"| {_f(m['image_auroc'])} | {_f(m['pixel_auroc'])} "
            f"| {_f(m['aupro'])} | {m['defects_found']}/{m['images']} |"
        )
    r = result
    at = r.get("recall_at_frr", {})
    lines.append(
        f"| **all** | {r['defects']} + {r['good_images']} good "
        f"| {_pct((at.get('0.01') or {}).get('recall'))} "
        f"| {_pct((at.get('0.001') or {}).get('recall'))} | {_f(r['image_auroc'])} "
        f"| {_f(r['pixel_auroc'])} | {_f(r['aupro'])} | {r['defects_found']}/{r['defects']} |"
    )
    lines.append("")
    for rate, p in at.items():
        if p.get("recall") is not None:
            lines.append(
                f"Recall @ {float(rate):.1%} FRR: threshold {p['threshold']:.6g} rejects "
                f"{p['good_rejected']} of {p['good']} good test parts"
                + (f" ({p['note']})." if p.get("note") else ".")
            )
        else:
            lines.append(f"Recall @ {float(rate):.1%} FRR: {p['note']}.")
    if r["image_f1_max"] is not None:
        lines.append(
            f"Image F1-max {r['image_f1_max']:.4f} at score >= {r['image_f1_threshold']:.6g}."
        )
    lines.append(
        f"At the bundle threshold {r['image_threshold']:.6g}: {r['defects_found']} of "
        f"{r['defects']} defective parts found, {r['good_rejected']} of {r['good_images']} good "
        f"parts rejected."
    )
    lines.append(f"AUPRO integrated to {r['aupro_fpr_limit']:.0%} FPR and normalised.")
    if r["empty_masks"]:
        lines.append(
            f"{r['empty_masks']} defect image(s) have an empty mask: their pixels count "
            f"as good, they add no region."
        )
    if r["missing_masks"]:
        lines.append(
            f"{r['missing_masks']} defect image(s) have no mask: pixel metrics that "
            f"include them are not given."
        )
    return "\n".join(lines) + "\n"


def test_masks(
    samples: Sequence[Sample], spec: PreprocessSpec, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(masks bool N x H x W, has_mask N) of `samples` at map size `hw`. Masks are read at frame
    size, cropped like the frames and resized (nearest); good images and defect images without
    a mask file get an empty one, the latter marked has_mask False (counted as missing)."""
    has_mask = np.array([not s.is_anomalous or s.mask_path is not None for s in samples])
    masks = np.zeros((len(samples), *hw), bool)
    for i in np.flatnonzero(has_mask).tolist():
        if samples[i].is_anomalous:
            masks[i] = mask_like_input(samples[i], spec, hw)
    return masks, has_mask


def mask_like_input(sample: Any, spec: PreprocessSpec, hw: tuple[int, int]) -> np.ndarray:
    """The ground truth of `sample` cropped like its frame and resized (nearest) to `hw`."""
    import cv2

    from inspectd.imagefile import read_image

    # load_inputs has already held every frame to source_size when the bundle records one
    frame_hw = spec.source_size or read_image(sample.path).shape[:2]
    mask = load_mask(sample, frame_hw).astype(np.uint8)
    if spec.roi is not None:
        x, y, w, h = spec.roi
        mask = mask[y : y + h, x : x + w]
    return cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
