"""Thresholds from known-good parts.

`max_of_good` is the first, simple rule used to seal a freshly trained bundle: the image
threshold is the highest score among held-out good parts (expected false-reject rate about
1 / (n + 1)), the pixel threshold a high quantile of all good map pixels. The statistically
stated calibration with a confidence bound is `inspectd calibrate` (issue 7).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from inspectd import __version__
from inspectd.bundle import THRESHOLDS_SCHEMA, Thresholds


def good_quantiles(scores: np.ndarray) -> dict[str, float]:
    qs = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
    return {k: round(float(np.quantile(scores, q)), 6) for k, q in qs.items()}


def max_of_good(
    scores: np.ndarray,
    maps: np.ndarray,
    model_sha256: str,
    *,
    pixel_quantile: float = 0.999,
    min_region_area: int = 4,
) -> Thresholds:
    """scores: N good-part scores; maps: N x H x W their anomaly maps (N >= 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no good parts to compute thresholds from")
    image = float(scores.max())
    pixel = min(float(np.quantile(maps, pixel_quantile)), image)
    return Thresholds.model_validate(
        {
            "schema": THRESHOLDS_SCHEMA,
            "image": round(image, 6),
            "pixel": round(pixel, 6),
            "min_region_area": min_region_area,
            "model_sha256": model_sha256,
            "method": f"max_of_good (pixel: quantile {pixel_quantile} of good map pixels)",
            "n_good": int(scores.size),
            "target_frr": None,
            "quantiles": good_quantiles(scores),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool_version": __version__,
        }
    )
