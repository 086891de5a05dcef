"""What a calibration says in words: the terminal's summary (``inspectd calibrate``, ``inspectd
teach``) and the good parts' regions line the report shares."""

from __future__ import annotations

import math

import numpy as np

from inspectd import threshold_stats as stats
from inspectd.calibrate.calibration import Request, Result


def good_regions_text(result: Result) -> str:
    areas = result.good_regions
    n = result.good.scores.size
    if not areas:
        return f"no good part shows a region at the pixel threshold ({n} parts)"
    q = np.quantile(areas, [0.5, 1.0])
    return (
        f"good parts show {len(areas)} regions at the pixel threshold ({n} parts; areas "
        f"median {q[0]:.0f}, max {q[1]:.0f} map pixels)"
    )


def summary(result: Result, req: Request) -> str:
    """What the terminal prints."""
    o, n = result.order, result.good.scores.size
    lines = [
        f"product {result.bundle.name}: {n} good parts"
        + (
            f" ({result.dropped_training} training images left out)"
            if result.dropped_training
            else ""
        )
        + (f", {len(result.skipped)} skipped" if result.skipped else ""),
        f"image threshold {result.image:.6g} ({result.method})",
        f"  order statistic: {o.threshold:.6g}, rejects {o.exceed} of {n} good parts; false-reject "
        f"rate <= {o.frr_bound:.4g} with {o.confidence:.0%} confidence (target {req.target_frr:g})",
    ]
    if not o.enough:
        need = stats.parts_needed(req.target_frr, req.confidence)
        lines.append(
            f"  --force: {need} good parts are needed for the target; the bound is "
            f"{o.frr_bound:.4g}, not {req.target_frr:g}"
        )
    if result.tail is not None:
        t = result.tail
        lines.append(
            f"  tail fit: {t.threshold:.6g} (upper {t.upper:.6g}; shape {t.shape:.3f}, "
            f"{t.n_tail} tail scores)"
        )
    else:
        lines.append(f"  tail fit: not made ({result.tail_error})")
    lines.append(
        f"pixel threshold {result.pixel:.6g}, regions of at least {result.min_area} map pixels"
    )
    lines.append("  " + good_regions_text(result))
    q = np.quantile(result.good.scores, [0.5, 0.9, 0.99, 1.0])
    lines.append("good scores: p50 {:.4g}, p90 {:.4g}, p99 {:.4g}, max {:.4g}".format(*q))
    m = result.defect_metrics
    if m:
        lines.append(
            f"defects: {m['n_defects']}, recall {m['recall']:.1%} at the threshold, image AUROC "
            f"{m['image_auroc']:.3f}, F1-max {m['f1_max']:.3f} at {m['f1_threshold']:.6g}"
            + (
                f", pixel AUROC {m['pixel_auroc']:.3f}, regions on the defect for "
                f"{m['located']:.0%} of those found"
                if "pixel_auroc" in m
                else ""
            )
        )
    if not math.isfinite(result.image):
        lines.append("warning: the image threshold is not finite")
    return "\n".join(lines)
