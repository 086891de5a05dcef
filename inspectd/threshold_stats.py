"""The statistics behind a threshold set from good parts alone (numpy and math only).

Order statistics (the default). Put the threshold just above the (n - j)-th smallest of n good
scores, so j calibration parts would have been rejected (any threshold above that score keeps
the guarantee; a higher one only lowers the rate further). Whatever the score distribution, the
number of good scores at or above the true (1 - p) quantile is Binomial(n, p); the threshold
rejects more than a fraction p of good parts exactly when at most j of them were, so

    P(false-reject rate > p) = P(Binomial(n, p) <= j).

We take the largest j that keeps this at or below 1 - confidence: the smallest threshold whose
false-reject rate is at most the target with that confidence. j = 0 needs (1 - p)^n <= 1 - conf,
which is where the "how many good parts" number comes from (2995 for 0.1 % at 95 %).

Tail fit (an option, reported beside). A generalised Pareto distribution fitted to the scores
above the 90th percentile (probability-weighted moments, Hosking & Wallis 1987) extrapolates
the tail to targets the data cannot reach distribution-free; a bootstrap gives its upper bound.
It assumes the tail is smooth, so it is reported, not trusted by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
SCORE_NOISE = 1e-5  # relative; float32 scores move ~1e-7 between batch sizes


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (n in the hundred thousands is fine)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [
        base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def parts_needed(target: float, confidence: float = CONFIDENCE) -> int:
    """Fewest good parts for which the largest score bounds the false-reject rate by
    ``target`` with ``confidence``: the smallest n with (1 - target)^n <= 1 - confidence."""
    return math.ceil(math.log(1.0 - confidence) / math.log1p(-target) - 1e-9)


def frr_upper_bound(exceed: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson bound: the largest false-reject rate still consistent (at
    ``confidence``) with ``exceed`` of ``n`` good parts at or above the threshold."""
    if exceed >= n:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):  # bisection: the CDF falls as p grows
        mid = (lo + hi) / 2
        if binom_cdf(exceed, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class OrderThreshold:
    threshold: float
    n: int
    exceed: int  # calibration parts above the threshold (it would have rejected them)
    rank: int  # the threshold sits just above the rank-th smallest score (1-based)
    frr_bound: float  # the false-reject rate is at most this with `confidence`
    confidence: float
    enough: bool  # False when n < parts_needed(target): the bound is above the target


def order_statistic_threshold(
    scores: np.ndarray, target: float, confidence: float = CONFIDENCE
) -> OrderThreshold:
    """The smallest threshold with false-reject rate <= target at ``confidence``; with too
    few parts, the largest score (the best the data supports) and enough=False."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = s.size
    if n == 0:
        raise ValueError("no good-part scores to calibrate from")
    if not np.isfinite(s).all():
        raise ValueError("good-part scores contain NaN or infinity")
    allowed = -1  # the largest j with P(Bin(n, target) <= j) <= 1 - confidence
    while binom_cdf(allowed + 1, n, target) <= 1.0 - confidence:
        allowed += 1
    enough = allowed >= 0
    j = max(allowed, 0)
    rank = n - j
    # Above that score by more than the engine's rounding (scores of the same image differ in
    # the last float32 digits between batch sizes), so that part and every lower one pass
    # (NG is score >= t); never past the midpoint to the next score, which stays rejected.
    threshold = float(s[rank - 1] + max(abs(s[rank - 1]) * SCORE_NOISE, 1e-12))
    if rank < n:
        threshold = min(threshold, float((s[rank - 1] + s[rank]) / 2))
    return OrderThreshold(
        threshold=threshold,
        n=n,
        exceed=j,
        rank=rank,
        frr_bound=frr_upper_bound(j, n, confidence),
        confidence=confidence,
        enough=enough,
    )


# -- tail fit ------------------------------------------------------------------------------------

TAIL_FRACTION = 0.10  # the generalised Pareto is fitted to the top 10 % of good scores
MIN_TAIL = 20  # exceedances needed for a fit worth reporting


@dataclass(frozen=True)
class TailFit:
    threshold: float  # point estimate of the score exceeded by `target` of good parts
    upper: float  # its bootstrap upper bound at `confidence`: the threshold to use
    shape: float  # xi > 0 heavy tail, < 0 bounded
    scale: float
    u: float  # where the tail starts
    n_tail: int


def fit_gpd(excess: np.ndarray) -> tuple[float, float]:
    """(shape xi, scale sigma) of a generalised Pareto fitted to exceedances >= 0 by
    probability-weighted moments (valid for xi < 0.5, robust for small samples)."""
    y = np.sort(np.asarray(excess, dtype=np.float64))
    m = y.size
    a0 = y.mean()
    a1 = np.mean((1.0 - (np.arange(1, m + 1) - 0.35) / m) * y)
    if a0 <= 0 or a0 - 2 * a1 <= 0:
        return 0.0, max(a0, 1e-12)
    k = a0 / (a0 - 2 * a1) - 2.0  # Hosking's k = -xi
    sigma = 2 * a0 * a1 / (a0 - 2 * a1)
    return -k, sigma


def gpd_quantile(u: float, xi: float, sigma: float, zeta: float, target: float) -> float:
    """Score exceeded with probability ``target`` when a fraction ``zeta`` exceeds u."""
    if abs(xi) < 1e-9:
        return u + sigma * math.log(zeta / target)
    return u + sigma / xi * ((zeta / target) ** xi - 1.0)


def tail_fit_threshold(
    scores: np.ndarray,
    target: float,
    confidence: float = CONFIDENCE,
    *,
    boots: int = 400,
    seed: int = 0,
) -> TailFit:
    s = np.asarray(scores, dtype=np.float64)
    n_tail = int(s.size * TAIL_FRACTION)
    if n_tail < MIN_TAIL:
        raise ValueError(
            f"a tail fit needs {math.ceil(MIN_TAIL / TAIL_FRACTION)} good parts or more "
            f"({MIN_TAIL} in the top {TAIL_FRACTION:.0%}); got {s.size}"
        )

    def estimate(sample: np.ndarray) -> tuple[float, float, float, float]:
        u = float(np.quantile(sample, 1.0 - TAIL_FRACTION))
        excess = sample[sample > u] - u
        xi, sigma = fit_gpd(excess)
        return gpd_quantile(u, xi, sigma, excess.size / sample.size, target), xi, sigma, u

    point, xi, sigma, u = estimate(s)
    rng = np.random.default_rng(seed)
    boot = [estimate(rng.choice(s, s.size))[0] for _ in range(boots)]
    upper = float(np.quantile(boot, confidence))
    return TailFit(
        threshold=float(point),
        upper=max(upper, float(point)),
        shape=float(xi),
        scale=float(sigma),
        u=u,
        n_tail=n_tail,
    )


# -- with defects --------------------------------------------------------------------------------


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct score, from (0, 0)."""
    labels = np.asarray(labels, bool)
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    s, y = np.asarray(scores, np.float64)[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # the last index of each tie group
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / max(1, (~y).sum())], np.r_[0.0, tp / max(1, y.sum())]
