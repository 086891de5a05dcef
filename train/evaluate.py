"""Evaluate an engine on an MVTec-layout test set (image and pixel AUROC, per defect type)."""

from __future__ import annotations

from typing import Any

import numpy as np

from inspectd.engine.base import Engine
from inspectd.preprocess import PreprocessSpec, load_inputs
from inspectd.train.datasets.mvtec import MVTecSet, load_mask
from inspectd.train.metrics import auroc


def evaluate(
    engine: Engine, dataset: MVTecSet, spec: PreprocessSpec, image_threshold: float, batch: int = 16
) -> dict[str, Any]:
    samples = dataset.test()
    scores, maps = [], []
    for i in range(0, len(samples), batch):
        r = engine.infer(load_inputs([s.path for s in samples[i : i + batch]], spec))
        scores.append(r.score)
        maps.append(r.anomaly_map)
    score = np.concatenate(scores)
    amap = np.concatenate(maps)
    labels = np.array([s.is_anomalous for s in samples])
    # Masks are read at frame size, cropped like the frames and resized to the map (nearest).
    masks = np.stack([mask_like_input(s, spec, amap.shape[1:]) for s in samples])
    defects = sorted({s.defect for s in samples if s.is_anomalous})
    good = ~labels
    per_defect = {}
    for d in defects:
        keep = good | np.array([s.defect == d for s in samples])
        per_defect[d] = round(auroc(labels[keep], score[keep]), 4)
    predicted_ng = score >= image_threshold
    return {
        "test_images": len(samples),
        "image_auroc": round(auroc(labels, score), 4),
        "pixel_auroc": round(auroc(masks.ravel(), amap.ravel()), 4),
        "good_rejected": int((predicted_ng & good).sum()),
        "defects_found": int((predicted_ng & labels).sum()),
        "defects": int(labels.sum()),
        "image_auroc_per_defect": per_defect,
    }


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
