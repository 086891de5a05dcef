"""Score and map -> verdict and defect regions, against the product's thresholds."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from inspectd.contract.verdict import Region, Verdict
from inspectd.preprocess import Geometry

MAX_REGIONS = 16  # the strongest ones; a map with more is one big defect to a PLC anyway


def regions_of(
    anomaly_map: np.ndarray, pixel_threshold: float, min_area: int, geometry: Geometry
) -> list[Region]:
    """Connected components (8-connected) of map >= pixel_threshold with at least `min_area`
    map pixels, strongest peak first, in frame coordinates."""
    mask = (anomaly_map >= pixel_threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    found: list[Region] = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        peak = float(anomaly_map[y : y + h, x : x + w][labels[y : y + h, x : x + w] == i].max())
        found.append(
            Region(
                x=int(round(geometry.x0 + x * geometry.sx)),
                y=int(round(geometry.y0 + y * geometry.sy)),
                w=max(1, int(round(w * geometry.sx))),
                h=max(1, int(round(h * geometry.sy))),
                area=int(round(area * geometry.sx * geometry.sy)),
                peak=round(peak, 6),
            )
        )
    found.sort(key=lambda r: r.peak, reverse=True)
    return found[:MAX_REGIONS]


def rejects(scores: npt.ArrayLike, image_threshold: float) -> np.ndarray:
    """The line's rule for many scores at once: True where the part is rejected, i.e. NG
    (score >= threshold) or ERROR (a non-finite score, see decide). Every offline path
    (evaluation, verification, operating points) counts rejects with this."""
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(s) | (s >= image_threshold)


class NonFiniteResult(ValueError):
    """The engine returned NaN or infinity: the part cannot be judged."""


def decide(
    score: float,
    anomaly_map: np.ndarray,
    *,
    image_threshold: float,
    pixel_threshold: float,
    min_region_area: int,
    geometry: Geometry,
) -> tuple[Verdict, list[Region]]:
    """NG when score >= image_threshold; regions are reported for NG parts only.

    A non-finite score or map raises NonFiniteResult: the caller turns it into ERROR, because a
    NaN compares False with every threshold and would otherwise pass as OK.
    """
    if not math.isfinite(score) or not np.isfinite(anomaly_map).all():
        raise NonFiniteResult("engine produced a non-finite anomaly map or score")
    if not rejects(score, image_threshold):
        return Verdict.OK, []
    return Verdict.NG, regions_of(anomaly_map, pixel_threshold, min_region_area, geometry)
