"""Thresholds from known-good parts: the image threshold, the pixel threshold for defect
regions, the smallest region, and the record of how they were found.

`max_of_good` seals a freshly trained bundle: the image threshold is the highest held-out good
score (expected false-reject rate about 1 / (n + 1), no stated bound). `inspectd calibrate`
(inspectd.calibrate.calibration) replaces it with a threshold with a stated false-reject rate and
confidence bound (inspectd.threshold_stats).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from inspectd import __version__
from inspectd.bundle import THRESHOLDS_SCHEMA, Thresholds
from inspectd.decide import regions_of
from inspectd.preprocess import Geometry
from inspectd.threshold_stats import SCORE_NOISE

QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
PIXEL_QUANTILE = 0.999
MAP_PIXELS = Geometry(0, 0, 1.0, 1.0)  # regions measured in map pixels


def good_quantiles(scores: np.ndarray) -> dict[str, float]:
    return {k: round(float(np.quantile(scores, q)), 6) for k, q in QUANTILES.items()}


def pixel_threshold(
    maps: np.ndarray, image_threshold: float, quantile: float = PIXEL_QUANTILE
) -> float:
    """A high quantile of all good-part map pixels, never above the image threshold: the score
    is the map's maximum, so an NG part always has at least its peak pixel in a region."""
    return min(float(np.quantile(maps, quantile)), image_threshold)


def region_areas(maps: np.ndarray, pixel: float) -> list[int]:
    """Areas (map pixels) of the regions each good map shows at the pixel threshold.

    Not a threshold of its own: the maps are mean-filtered, so a region on a good part is as
    large as one on a real defect (measured on the button: good-part regions 1-900 px, defect
    regions 11-1900 px). The smallest region that matters is a product specification (the
    defect size the customer accepts), so calibrate takes it as a setting and reports these
    areas beside it."""
    return [r.area for m in maps for r in regions_of(m, pixel, 1, MAP_PIXELS)]


def record(
    *,
    image: float,
    pixel: float,
    min_area: int,
    model_sha256: str,
    method: str,
    scores: np.ndarray,
    target_frr: float | None = None,
    confidence: float | None = None,
    frr_bound: float | None = None,
    alternatives: dict[str, float] | None = None,
) -> Thresholds:
    return Thresholds.model_validate(
        {
            "schema": THRESHOLDS_SCHEMA,
            # exact (YAML keeps every digit): the order-statistic threshold is one float above
            # a good score, and rounding down would reject that part
            "image": float(image),
            "pixel": round(pixel, 6),
            "min_region_area": min_area,
            "model_sha256": model_sha256,
            "method": method,
            "n_good": int(np.asarray(scores).size),
            "target_frr": target_frr,
            "confidence": confidence,
            "frr_bound": None if frr_bound is None else float(f"{frr_bound:.4g}"),
            "quantiles": good_quantiles(scores),
            "alternatives": {k: float(v) for k, v in (alternatives or {}).items()},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool_version": __version__,
        }
    )


def max_of_good(
    scores: np.ndarray,
    maps: np.ndarray,
    model_sha256: str,
    *,
    pixel_quantile: float = PIXEL_QUANTILE,
    min_area: int = 4,
) -> Thresholds:
    """scores: N good-part scores; maps: N x H x W their anomaly maps (N >= 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no good parts to compute thresholds from")
    # NG is score >= threshold: the highest good part itself must pass (stats.SCORE_NOISE)
    top = float(scores.max())
    image = top + max(abs(top) * SCORE_NOISE, 1e-12)
    return record(
        image=image,
        pixel=pixel_threshold(maps, image, pixel_quantile),
        min_area=min_area,
        model_sha256=model_sha256,
        method=f"max_of_good (pixel: quantile {pixel_quantile} of good map pixels)",
        scores=scores,
    )
