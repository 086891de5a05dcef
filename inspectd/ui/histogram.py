"""The station view's histogram: recent scores in bins, accepted and rejected apart, with the
threshold and the calibration's good-score quantiles to draw against (the drift picture: good
parts creeping right of p50/p90 is drift).

The axis is about the good parts and the threshold: it ends at twice the threshold (or the
highest accepted score or quantile above that). A crack scoring 40x the threshold would
otherwise squeeze every good part and the threshold into one or two bins; scores past the end
are counted in ``over`` and drawn in the last bar.
"""

from __future__ import annotations

from typing import Any

BINS = 30


def score_histogram(
    scores: list[tuple[float, str]], threshold: float | None, quantiles: dict[str, float]
) -> dict[str, Any]:
    """``scores``: (score, verdict) of the recent parts."""
    marks = [v for v in quantiles.values() if isinstance(v, (int, float))]
    accepted = [s for s, verdict in scores if verdict == "OK"]
    if threshold:
        top = max([2 * threshold, *accepted, *marks])
    else:
        top = max([*(s for s, _ in scores), *marks, 1e-6])
    width = top / BINS
    ok, ng = [0] * BINS, [0] * BINS
    over = 0
    for score, verdict in scores:
        over += score > top
        i = min(BINS - 1, max(0, int(score / width)))
        (ok if verdict == "OK" else ng)[i] += 1
    return {
        "bin_width": width,
        "max": top,
        "ok": ok,
        "ng": ng,
        "over": over,
        "n": len(scores),
        "n_ok": sum(ok),
        "threshold": threshold,
        "quantiles": quantiles,
    }
