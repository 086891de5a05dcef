"""Detection metrics in numpy (the demo and `inspectd eval` import these without torch).

Every metric here is exact (no threshold grid) and built on sorting, so a test set of ~1000
maps of 256 x 256 (65 M pixels) costs a few hundred MB and seconds, not a Python loop:

- auroc: Mann-Whitney U from the sorted negatives and a binary search per positive.
- aupro: the PRO curve of Bergmann et al. (MVTec AD) evaluated at every distinct score.
- f1_max: precision and recall at every distinct score from one sort.
- recall_at_frr: the share of defects caught at the threshold that rejects at most a given
  share of the good parts (the figure a line lives with).

Scores keep their floating dtype (float32 maps stay float32: half the memory, same order).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

_CHUNK = 1 << 22  # positives per binary-search pass: bounds the int64 temporaries (32 MB each)


def _as_scores(scores: np.ndarray) -> np.ndarray:
    a = np.asarray(scores).ravel()
    # float32/float64 are compared as they are; anything else (ints, bools) as float64
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random anomalous sample scores above a
    random good one, ties counting half (Mann-Whitney U). NaN when one class is absent.

    Exact for any size: the negatives are sorted once and each positive is placed among them
    by binary search (counts of negatives strictly below and at-or-below it), in chunks, so the
    memory is one sorted copy of the scores plus bounded temporaries; no argsort of everything.
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = _as_scores(scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in size: {labels.size} vs {scores.size}")
    n_pos = int(np.count_nonzero(labels))
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg = scores[~labels]  # a copy: sorted in place, no second one
    neg.sort()
    pos = scores[labels]
    pos.sort()  # sorted keys make each binary search start where the previous one ended
    twice_u = 0  # sum over positives of (#neg below) + (#neg at or below) = 2 U, an integer
    for i in range(0, n_pos, _CHUNK):
        p = pos[i : i + _CHUNK]
        twice_u += int(np.searchsorted(neg, p, "left").sum()) + int(
            np.searchsorted(neg, p, "right").sum()
        )
    return float(twice_u / (2.0 * n_pos * n_neg))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(best F1, threshold) over every threshold, predicting anomalous when score >= threshold.

    The threshold is the lowest score of the best operating point (a score that occurs in the
    data). (NaN, NaN) when there are no positives.
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = _as_scores(scores)
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0:
        return float("nan"), float("nan")
    order = np.argsort(scores, kind="stable")[::-1]
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # end of each tie group
    tp = np.cumsum(y, dtype=np.int64)[last]
    predicted = last + 1
    f1 = 2.0 * tp / (predicted + n_pos)  # = 2PR / (P + R)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s[last[best]])


# Operating points reported beside AUROC: a line tolerates about 1 % false rejects, a good one
# 0.1 %. A rate needs at least 1 / rate good parts to mean more than "no good part rejected".
FRR_POINTS = (0.01, 0.001)


def recall_at_frr(labels: np.ndarray, scores: np.ndarray, frr: float) -> dict[str, float | int]:
    """Recall at the lowest threshold that rejects at most `frr` of the good samples.

    Rejected is the daemon's rule (inspectd.decide.rejects: score >= threshold, and every
    non-finite score). With n good scores, floor(frr * n) of them may be rejected: the threshold
    sits just above the next one, so with fewer than 1 / frr good parts it is just above the
    highest good score (no false reject at all). Returns recall, threshold, good_rejected,
    good (n) and allowed (floor(frr * n)); recall is NaN without positives.
    """
    from inspectd.decide import rejects

    labels = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {labels.size} vs {s.size}")
    good = np.where(np.isfinite(s[~labels]), s[~labels], np.inf)
    good[::-1].sort()  # descending
    n = good.size
    if n == 0:
        raise ValueError("no good samples: a false-reject rate is undefined")
    allowed = int(np.floor(frr * n + 1e-9))
    threshold = -np.inf if allowed >= n else float(np.nextafter(good[allowed], np.inf))
    rejected = rejects(s, threshold)
    n_pos = int(labels.sum())
    return {
        "recall": float(rejected[labels].sum() / n_pos) if n_pos else float("nan"),
        "threshold": threshold,
        "good_rejected": int(rejected[~labels].sum()),
        "good": n,
        "allowed": allowed,
    }


def operating_points(labels: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, Any]]:
    """Recall at each of FRR_POINTS, keyed by the rate ("0.01"). A rate that needs more good
    parts than the set has (1 / rate) is reported with recall None and `note: n too small`,
    except 1 %, whose figure with fewer parts is recall at zero false rejects (`note` says so)."""
    out: dict[str, dict[str, Any]] = {}
    for frr in FRR_POINTS:
        p = recall_at_frr(labels, scores, frr)
        note = None
        if p["good"] * frr < 1 - 1e-9:
            if frr < FRR_POINTS[0]:
                out[f"{frr:g}"] = {
                    "recall": None,
                    "good": p["good"],
                    "note": f"n too small ({p['good']} good < {round(1 / frr)})",
                }
                continue
            note = f"{p['good']} good < {round(1 / frr)}: no false reject allowed"
        out[f"{frr:g}"] = {
            "recall": rounded(p["recall"]),
            "threshold": p["threshold"],
            "good_rejected": p["good_rejected"],
            "good": p["good"],
            "note": note,
        }
    return out


def recall_at_points(
    points: dict[str, dict[str, Any]], scores: np.ndarray
) -> dict[str, float | None]:
    """The share of `scores` (one defect type's) rejected at each threshold of `points` (from
    operating_points over the whole set, as a line runs); None where the point has none."""
    from inspectd.decide import rejects

    return {
        k: None if p["recall"] is None else float(rejects(scores, p["threshold"]).mean())
        for k, p in points.items()
    }


def rounded(x: float | None, digits: int = 4) -> float | None:
    """A metric for JSON: rounded, and None where undefined (None or NaN)."""
    return None if x is None or np.isnan(x) else round(float(x), digits)


def _regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool mask (as MVTec AD's evaluation): labels, count."""
    import cv2  # here, so `auroc` users (the demo) do not load OpenCV for it

    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return lab, n - 1


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region overlap (PRO) curve up to `fpr_limit` FPR, divided by it.

    Bergmann et al., MVTec AD (IJCV 2021), as their evaluation code computes it: every
    8-connected component of every ground-truth mask is one region; at threshold t,
    PRO(t) = mean over regions of |region ∩ {map >= t}| / |region| and FPR(t) = the share of
    all pixels outside the masks (good images and the background of defect images) with
    map >= t. The curve through the (FPR, PRO) points of every distinct score is integrated
    with the trapezoid rule from FPR 0 to exactly `fpr_limit` (the last segment is interpolated
    linearly there) and normalised, so a perfect map gives 1.0 and a random one about
    fpr_limit / 2.

    Exact, no threshold grid: PRO only changes at region pixels and FPR only at good pixels,
    so the good pixels are sorted once, region pixels are sorted with weight 1 / |region|, and
    each FPR step is paired with the PRO just above and at its score by binary search.
    An image whose mask is empty contributes only good pixels. NaN when there is no region
    or no good pixel.

    masks: bool N x H x W; maps: float N x H x W (same shape).
    """
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(
            f"masks and maps must both be N x H x W, got {masks.shape} and {maps.shape}"
        )
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")

    # Region pixels and their weights: only images that have a defect pixel need labelling.
    pos_scores, pos_weights, n_regions = [], [], 0
    for i in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)).tolist():
        lab, n = _regions(masks[i])
        inside = lab > 0
        sizes = np.bincount(lab[inside], minlength=n + 1)
        pos_scores.append(maps[i][inside])
        pos_weights.append(1.0 / sizes[lab[inside]])
        n_regions += n
    n_neg = masks.size - int(np.count_nonzero(masks))
    if n_regions == 0 or n_neg == 0:
        return float("nan")

    pos = _as_scores(np.concatenate(pos_scores))
    w = np.concatenate(pos_weights)
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    # cumulative region weight from the top: above(v) = sum of w where score >= v (or > v)
    tail = np.r_[np.cumsum(w[order][::-1])[::-1], 0.0] / n_regions

    neg = _as_scores(maps)[~masks.ravel()]  # a copy, sorted in place (ascending)
    neg.sort()

    def pro_above(v: np.ndarray, side: Literal["left", "right"]) -> np.ndarray:
        # PRO with threshold just above v ("right": score > v) or at v ("left": score >= v)
        return tail[np.searchsorted(pos, v, side)]

    # The curve's FPR steps are the good pixels, best first: a tie group of c pixels at score v
    # is the segment from (a, PRO(> v)) to (a + c/n, PRO(>= v)), area c/n * mean of the two.
    # That area is the sum of a per-pixel term, so the good pixels above the limit need no
    # grouping and are summed in chunks; only the tie group that crosses the limit is cut.
    k = min(n_neg, int(np.ceil(fpr_limit * n_neg)))  # good pixels needed to reach the limit
    v_cut = neg[n_neg - k]  # the score of the k-th best good pixel
    lo = n_neg - int(np.searchsorted(neg, v_cut, "right"))  # good pixels scoring above it
    hi = n_neg - int(np.searchsorted(neg, v_cut, "left"))  # ... and at or above it
    area = 0.0
    for i in range(n_neg - lo, n_neg, _CHUNK):
        v = neg[i : min(i + _CHUNK, n_neg)]
        area += float(pro_above(v, "right").sum() + pro_above(v, "left").sum()) / (2 * n_neg)
    # the crossing group, cut at exactly fpr_limit with PRO interpolated along its segment
    a, b = lo / n_neg, hi / n_neg
    p_start, p_end = (float(pro_above(np.array([v_cut]), side)[0]) for side in ("right", "left"))
    width = max(0.0, fpr_limit - a)
    p_cut = p_start + width / (b - a) * (p_end - p_start)
    area += width * (p_start + p_cut) / 2
    return area / fpr_limit
