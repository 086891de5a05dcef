"""The statistics of calibration, checked against scipy/scikit-learn and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from inspectd.accuracy import f1_max
from inspectd.threshold_stats import (
    binom_cdf,
    frr_upper_bound,
    order_statistic_threshold,
    parts_needed,
    roc_curve,
    tail_fit_threshold,
)


@pytest.mark.parametrize("target", [0.001, 0.005, 0.01, 0.05])
def test_parts_needed_is_the_smallest_n_whose_maximum_bounds_the_rate(target):
    n = parts_needed(target)
    assert (1 - target) ** n <= 0.05 < (1 - target) ** (n - 1)
    assert parts_needed(0.001) == 2995  # the number the users will quote


def test_binomial_cdf_and_the_clopper_pearson_bound_match_scipy():
    for n, p in [(10, 0.3), (300, 0.02), (5000, 0.001), (20000, 0.01)]:
        for k in sorted({0, 1, int(n * p), int(n * p * 2)}):
            assert binom_cdf(k, n, p) == pytest.approx(sps.binom.cdf(k, n, p), rel=1e-9, abs=1e-15)
    for k, n in [(0, 100), (0, 2995), (3, 300), (40, 1000)]:
        assert frr_upper_bound(k, n) == pytest.approx(sps.beta.ppf(0.95, k + 1, n - k), rel=1e-6)


def test_the_threshold_sits_just_above_a_good_score_so_that_part_passes():
    scores = np.array([0.1, 0.4, 0.2, 0.3, 0.25])  # 0.5 ** 5 <= 0.05: five parts are enough
    r = order_statistic_threshold(scores, target=0.5, confidence=0.95)
    assert 0.4 < r.threshold <= 0.4 * (1 + 1e-5)  # above by more than float32 noise, no more
    assert r.enough and r.exceed == 0 and r.frr_bound <= 0.5


def test_with_exceedances_allowed_the_next_score_stays_above_the_threshold():
    scores = np.linspace(0.5, 1.0, 1000)
    rank = order_statistic_threshold(scores, target=0.01).rank
    assert rank < 1000  # some calibration parts are allowed above the threshold
    scores[rank] = scores[rank - 1] + 1e-9  # the next score closer than the noise margin
    r = order_statistic_threshold(scores, target=0.01)
    assert scores[rank - 1] < r.threshold < scores[rank]
    assert int((scores >= r.threshold).sum()) == r.exceed == 1000 - rank


def test_too_few_parts_give_the_largest_score_and_the_bound_it_supports():
    scores = np.random.default_rng(0).normal(size=300)
    r = order_statistic_threshold(scores, target=0.001)
    assert not r.enough and r.exceed == 0 and r.threshold > scores.max()
    assert r.frr_bound == pytest.approx(1 - 0.05 ** (1 / 300))


def test_the_bound_holds_with_its_confidence_whatever_the_distribution():
    """Simulate many calibrations: the true false-reject rate exceeds the target in at most 5 %
    of them, and not in far fewer (the threshold is not needlessly high)."""
    rng = np.random.default_rng(1)
    target, n, runs = 0.02, 600, 4000
    failures = 0
    for _ in range(runs):
        scores = rng.exponential(size=n)  # P(score > t) = exp(-t)
        r = order_statistic_threshold(scores, target)
        failures += math.exp(-r.threshold) > target
    rate = failures / runs
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert rate >= 0.02  # allowed exceedances j > 0 here: the bound is used, not wasted


def test_tail_fit_recovers_a_known_quantile_and_refuses_small_samples():
    rng = np.random.default_rng(2)
    normal = rng.normal(size=5000)
    fit = tail_fit_threshold(normal, 0.001)
    assert fit.threshold == pytest.approx(sps.norm.ppf(0.999), abs=0.25)
    assert fit.upper >= fit.threshold and fit.shape < 0.1  # a light tail
    pareto = sps.genpareto.rvs(0.25, size=20000, random_state=3)
    fit = tail_fit_threshold(pareto, 0.001)
    assert fit.threshold == pytest.approx(sps.genpareto.ppf(0.999, 0.25), rel=0.2)
    assert fit.shape > 0.1  # a heavy tail
    with pytest.raises(ValueError, match="needs 200 good parts or more"):
        tail_fit_threshold(normal[:150], 0.001)


def test_roc_and_f1_on_hand_made_cases():
    labels = np.array([0, 0, 0, 1, 1, 0, 1], bool)
    scores = np.array([0.1, 0.2, 0.2, 0.2, 0.9, 0.3, 0.5])
    fpr, tpr = roc_curve(labels, scores)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores))
    f1, t = f1_max(labels, scores)
    # NG at >= 0.5 finds 2 of 3 defects and no good part: F1 = 0.8, the best here
    assert t == 0.5 and f1 == pytest.approx(0.8)


def test_max_of_good_lets_the_highest_good_part_pass() -> None:
    """NG is score >= threshold, so a threshold equal to the top good score would reject the
    very part it was computed from (negative likelihood scores included)."""
    from inspectd.calibrate.thresholds import max_of_good

    for scores in ([0.1, 0.3, 0.2], [-2.0, -1.5, -1.75]):
        maps = np.zeros((3, 4, 4), np.float32)
        t = max_of_good(np.array(scores, np.float32), maps, "0" * 64)
        assert max(scores) < t.image < max(scores) + 1e-4
