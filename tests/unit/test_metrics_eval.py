"""Evaluation metrics (inspectd/accuracy.py, train/evaluate.py) and `inspectd eval`.

AUROC and F1-max are checked against scikit-learn; AUPRO against hand-made maps whose curve is
known, a straightforward threshold-sweep implementation and MVTec AD's own sort-based one.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from inspectd import accuracy as metrics
from inspectd.accuracy import aupro, auroc, f1_max, recall_at_frr
from inspectd.train.evaluate import compute_metrics, to_markdown

sk = pytest.importorskip("sklearn.metrics")


def blobs(rng: np.random.Generator, n: int, hw: int = 48, empty_every: int = 0) -> np.ndarray:
    """n masks with 0-3 rectangles each (some touching: one region); every empty_every-th
    image of the defective half has an empty mask, like a few real annotations."""
    masks = np.zeros((n, hw, hw), bool)
    for i in range(n // 3, n):  # the first third are good images
        if empty_every and i % empty_every == 0:
            continue
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, hw - 4, 2)
            masks[i, y : y + rng.integers(2, 16), x : x + rng.integers(2, 16)] = True
    return masks


def noisy_maps(rng: np.random.Generator, masks: np.ndarray, levels: int = 0) -> np.ndarray:
    """Maps that see the defects, blurred and noisy; quantised to `levels` to force ties."""
    m = np.stack([cv2.GaussianBlur(k.astype(np.float32), (0, 0), 2) for k in masks])
    m += rng.normal(0, 0.3, masks.shape).astype(np.float32)
    return np.round(m * levels) / levels if levels else m


# -- AUROC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_auroc_matches_sklearn_with_ties(dtype: type) -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.random(500) < 0.3
        s = (rng.integers(0, 12, 500) + 2 * y).astype(dtype)  # few levels: many ties across classes
        assert auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_pixel_auroc_matches_sklearn_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pixel AUROC on masks and maps (float32, ties), with the positives split into many
    binary-search chunks so the chunk loop is exercised, not just one pass."""
    rng = np.random.default_rng(2)
    masks = blobs(rng, 30)
    maps = noisy_maps(rng, masks, levels=20).astype(np.float32)
    monkeypatch.setattr(metrics, "_CHUNK", 997)
    assert auroc(masks, maps) == pytest.approx(
        sk.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12
    )


def test_auroc_undefined_without_both_classes() -> None:
    assert np.isnan(auroc(np.zeros(5, bool), np.arange(5.0)))
    assert np.isnan(auroc(np.ones(5, bool), np.arange(5.0)))


# -- F1-max ----------------------------------------------------------------------------------


def test_f1_max_matches_sklearn_precision_recall_curve() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        y = rng.random(300) < 0.4
        s = rng.integers(0, 30, 300) + 8 * y  # ties, overlapping classes
        f1, t = f1_max(y, s)
        p, r, th = sk.precision_recall_curve(y, s)
        ref = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)[:-1]
        assert f1 == pytest.approx(ref.max(), abs=1e-12)
        assert t == th[np.argmax(ref)]
        # the threshold is an operating point: NG = score >= t reproduces the F1
        pred = s >= t
        assert 2 * (pred & y).sum() / (pred.sum() + y.sum()) == pytest.approx(f1)


def test_f1_max_undefined_without_positives() -> None:
    assert all(np.isnan(v) for v in f1_max(np.zeros(4, bool), np.arange(4.0)))


# -- AUPRO: hand-made cases ------------------------------------------------------------------


def two_regions() -> np.ndarray:
    """Image 0 good; image 1 holds two 6x6 regions, apart."""
    masks = np.zeros((2, 32, 32), bool)
    masks[1, 2:8, 2:8] = True
    masks[1, 20:26, 20:26] = True
    return masks


def test_aupro_perfect_map_is_one() -> None:
    masks = two_regions()
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)


def test_aupro_inverted_map_is_zero() -> None:
    masks = two_regions()
    assert aupro(masks, 1.0 - masks.astype(np.float32)) == pytest.approx(0.0)


def test_aupro_map_that_finds_one_of_two_regions_is_half() -> None:
    """One region above every good pixel, the other below them all: PRO is 0.5 from FPR 0 to
    1 (pixel AUROC would say 0.5 too, but only because both regions have the same size)."""
    masks = two_regions()
    maps = np.full(masks.shape, 0.5, np.float32)
    maps[1, 2:8, 2:8] = 1.0
    maps[1, 20:26, 20:26] = 0.0
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_interpolates_the_limit_inside_a_segment() -> None:
    """Found region at 1, the other tied with all good pixels at 0: the curve is one straight
    segment from (0, 0.5) to (1, 1); its area up to FPR 0.3 is 0.15 + 0.3 * 0.3 / 4 = 0.1725,
    so AUPRO = 0.575 exactly only if the last segment is cut at 0.3, not at a vertex."""
    masks = two_regions()
    maps = np.zeros(masks.shape, np.float32)
    maps[1, 2:8, 2:8] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.575)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.75)


def test_aupro_regions_are_8_connected() -> None:
    """A 4x4 and a 2x2 square touching at a corner are one region (MVTec AD's rule): a map
    that finds only the small one covers 4/20 of it, not half of two regions."""
    masks = np.zeros((1, 16, 16), bool)
    masks[0, 2:6, 2:6] = True
    masks[0, 6:8, 6:8] = True
    maps = np.full(masks.shape, 0.5, np.float32)
    maps[0, 6:8, 6:8] = 1.0
    maps[0, 2:6, 2:6] = 0.0
    assert aupro(masks, maps) == pytest.approx(0.2)


def test_aupro_random_map_is_about_half_the_limit() -> None:
    """A map unrelated to the defects: PRO follows FPR, so the normalised area is about 0.15."""
    rng = np.random.default_rng(4)
    masks = blobs(rng, 60, 64)
    assert aupro(masks, rng.random(masks.shape, dtype=np.float32)) == pytest.approx(0.15, abs=0.01)


def test_aupro_empty_masks() -> None:
    rng = np.random.default_rng(5)
    maps = rng.random((3, 16, 16), dtype=np.float32)
    assert np.isnan(aupro(np.zeros((3, 16, 16), bool), maps))  # no region at all
    # an empty mask adds good pixels and no region: a map that lights up a quarter of it
    # (FPR ~0.09) costs false positives before any region is found; it is not skipped
    masks = two_regions()
    maps = noisy_maps(rng, masks)
    base = aupro(masks, maps)
    lit = np.zeros((1, 32, 32), np.float32)
    lit[0, :16, :16] = maps.max() + 1
    with_empty = aupro(np.r_[masks, np.zeros((1, 32, 32), bool)], np.r_[maps, lit])
    assert 0 < with_empty < base - 0.05


# -- AUPRO against reference implementations -------------------------------------------------


def pro_curve_by_thresholds(
    masks: np.ndarray, maps: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The textbook PRO curve: at each of n thresholds, the mean overlap of every region and the
    FPR over good pixels, each from a full pass over the binarised maps."""
    regions = []
    for i, m in enumerate(masks):
        count, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        regions += [(i, lab == k) for k in range(1, count)]
    good = ~masks
    fpr, pro = [], []
    for t in np.linspace(maps.max(), maps.min(), n):
        hit = maps >= t
        fpr.append((hit & good).sum() / good.sum())
        pro.append(np.mean([(hit[i] & r).sum() / r.sum() for i, r in regions]))
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro_mvtec_reference(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """MVTec AD's evaluation code in short: argsort every pixel, cumulative FPR and PRO steps,
    merge ties, pad with (0, 0) and (1, 1), trapezoid with the end point interpolated."""
    fp_step = (~masks).astype(np.float64).ravel()
    pro_step = np.zeros(masks.shape)
    n_regions = 0
    for i, m in enumerate(masks):
        count, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        for k in range(1, count):
            pro_step[i][lab == k] = 1.0 / (lab == k).sum()
        n_regions += count - 1
    order = np.argsort(maps.ravel(), kind="stable")[::-1]
    s = maps.ravel()[order]
    fpr = np.cumsum(fp_step[order]) / fp_step.sum()
    pro = np.cumsum(pro_step.ravel()[order]) / n_regions
    keep = np.r_[s[1:] != s[:-1], True]
    x, y = np.r_[0.0, fpr[keep], 1.0], np.r_[0.0, pro[keep], 1.0]
    j = np.searchsorted(x, limit, "right")  # first point past the limit
    y_lim = (
        y[j - 1] + (y[j] - y[j - 1]) * (limit - x[j - 1]) / (x[j] - x[j - 1])
        if x[j - 1] < limit
        else y[j - 1]
    )
    xs, ys = np.r_[x[:j], limit], np.r_[y[:j], y_lim]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2) / limit)


@pytest.mark.parametrize("levels", [0, 25])  # continuous scores, and heavy ties
def test_aupro_agrees_with_reference_implementations(levels: int) -> None:
    rng = np.random.default_rng(6)
    masks = blobs(rng, 18, empty_every=5)
    maps = noisy_maps(rng, masks, levels).astype(np.float32)
    got = aupro(masks, maps)
    assert 0.3 < got < 0.95  # a curve with something to get wrong, not a trivial 0 or 1
    assert got == pytest.approx(aupro_mvtec_reference(masks, maps), abs=1e-9)
    fpr, pro = pro_curve_by_thresholds(masks, maps, 400)
    keep = fpr <= 0.3
    x, y = np.r_[fpr[keep], 0.3], np.r_[pro[keep], np.interp(0.3, fpr, pro)]
    assert got == pytest.approx(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / 0.3, abs=1e-2)


# -- compute_metrics and the Markdown table --------------------------------------------------


def test_compute_metrics_per_defect_type_against_the_good_images() -> None:
    rng = np.random.default_rng(7)
    kinds = ["good"] * 6 + ["dent"] * 3 + ["smudge"] * 3
    masks = np.zeros((12, 32, 32), bool)
    masks[6:9, 10:20, 10:20] = True  # dents: found by the map
    masks[9:11, 2:6, 2:6] = True  # smudges: missed by the map; the last one has an empty mask
    maps = rng.random(masks.shape, dtype=np.float32) * 0.5
    maps[6:9, 10:20, 10:20] += 1.0
    scores = maps.reshape(12, -1).max(1)
    r = compute_metrics(kinds, scores, maps, masks, image_threshold=1.0)

    assert (r["test_images"], r["good_images"], r["defects"], r["empty_masks"]) == (12, 6, 6, 1)
    dent, smudge = r["per_defect"]["dent"], r["per_defect"]["smudge"]
    assert dent["image_auroc"] == 1.0 and dent["aupro"] == 1.0 and dent["pixel_auroc"] == 1.0
    assert dent["defects_found"] == 3 and dent["recall"] == 1.0
    assert smudge["defects_found"] == 0 and smudge["aupro"] < 0.5
    # each type is measured against the good images only, not the other type's images
    keep = np.array([k in ("good", "smudge") for k in kinds])
    assert smudge["image_auroc"] == round(
        auroc(keep[keep] & (np.array(kinds)[keep] != "good"), scores[keep]), 4
    )
    assert r["aupro"] == round(aupro(masks, maps), 4)
    assert r["good_rejected"] == 0 and r["recall"] == 0.5 and r["false_reject_rate"] == 0.0
    f1, t = f1_max(np.array(kinds) != "good", scores)
    assert r["image_f1_max"] == round(f1, 4) and r["image_f1_threshold"] == t


def test_compute_metrics_copes_with_empty_and_missing_masks() -> None:
    """A type whose masks are all empty has no region (AUPRO None, pixel AUROC None: no
    defect pixel); a missing mask leaves out pixel metrics rather than counting it as good."""
    rng = np.random.default_rng(8)
    kinds = ["good"] * 3 + ["blank"] * 2 + ["dent"] * 2
    masks = np.zeros((7, 16, 16), bool)
    masks[5:, 4:8, 4:8] = True
    maps = rng.random(masks.shape, dtype=np.float32)
    r = compute_metrics(kinds, maps.reshape(7, -1).max(1), maps, masks, 0.5)
    assert (
        r["per_defect"]["blank"]["aupro"] is None
        and r["per_defect"]["blank"]["pixel_auroc"] is None
    )
    assert r["per_defect"]["dent"]["aupro"] is not None and r["empty_masks"] == 2
    json.dumps(r, allow_nan=False)  # undefined is None, never NaN, so the JSON is standard

    has_mask = np.array([True] * 6 + [False])
    r = compute_metrics(kinds, maps.reshape(7, -1).max(1), maps, masks, 0.5, has_mask)
    assert r["missing_masks"] == 1 and r["pixel_auroc"] is None and r["aupro"] is None
    assert r["per_defect"]["dent"]["aupro"] is None and r["image_auroc"] is not None
    assert "1 defect image(s) have no mask" in to_markdown(r)


def test_to_markdown_has_a_row_per_defect_type() -> None:
    rng = np.random.default_rng(9)
    kinds = ["good"] * 4 + ["crack"] * 2 + ["stain"] * 2
    masks = np.zeros((8, 16, 16), bool)
    masks[4:, 3:9, 3:9] = True
    maps = rng.random(masks.shape, dtype=np.float32) + masks
    r = compute_metrics(kinds, maps.reshape(8, -1).max(1), maps, masks, 1.5)
    table = to_markdown(r, title="demo")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "defect type",
        "crack",
        "stain",
        "**all**",
    ]
    assert f"| {r['per_defect']['crack']['aupro']:.4f} |" in rows[1]
    assert "Image F1-max" in table and table.startswith("### demo")


def test_recall_at_frr_rejects_at_most_the_allowed_good_parts() -> None:
    rng = np.random.default_rng(11)
    good, bad = rng.normal(0, 1, 1000), rng.normal(2, 1, 300)
    labels = np.r_[np.zeros(1000, bool), np.ones(300, bool)]
    scores = np.r_[good, bad]
    for frr in (0.01, 0.001):
        p = recall_at_frr(labels, scores, frr)
        allowed = int(frr * 1000)
        assert p["good_rejected"] == allowed == p["allowed"]
        # the lowest such threshold: the next good score down would be one reject too many
        assert (good >= p["threshold"]).sum() == allowed
        assert (good >= np.sort(good)[::-1][allowed]).sum() == allowed + 1
        assert p["recall"] == pytest.approx((bad >= p["threshold"]).mean())
    assert (
        recall_at_frr(labels, scores, 0.01)["recall"]
        > recall_at_frr(labels, scores, 0.001)["recall"]
    )


def test_recall_at_frr_with_ties_and_non_finite_scores() -> None:
    # three good parts tie at the top: allowing one reject must reject none of them (not three)
    good = np.r_[np.full(3, 5.0), np.arange(97, dtype=float) / 100]
    labels = np.r_[np.zeros(100, bool), np.ones(2, bool)]
    p = recall_at_frr(labels, np.r_[good, 4.0, 6.0], 0.01)
    assert p["good_rejected"] == 0 and p["threshold"] > 5.0 and p["recall"] == 0.5
    # a NaN score is a reject (ERROR) on either side, as the daemon treats it
    scores = np.r_[good[:-1], np.nan, np.nan, 0.0]
    p = recall_at_frr(labels, scores, 0.01)
    assert p["good_rejected"] == 1 and p["recall"] == 0.5


def test_operating_points_say_when_the_set_is_too_small() -> None:
    rng = np.random.default_rng(12)
    kinds = ["good"] * 40 + ["dent"] * 10 + ["chip"] * 10
    maps = rng.random((60, 8, 8), dtype=np.float32) * 0.9
    maps[40:50] += 1.0  # dents clear of every good part; two chips of ten above them
    maps[50:52] += 1.0
    maps[52:60] *= 0.5
    masks = np.zeros(maps.shape, bool)
    r = compute_metrics(kinds, maps.reshape(60, -1).max(1), maps, masks, 10.0)
    one, tenth = r["recall_at_frr"]["0.01"], r["recall_at_frr"]["0.001"]
    # 40 good parts: 1 % allows no reject, so the threshold sits above the top good score
    assert one["good_rejected"] == 0 and "no false reject allowed" in one["note"]
    assert one["threshold"] > float(maps[:40].max())
    assert tenth["recall"] is None and tenth["note"].startswith("n too small")
    assert r["per_defect"]["dent"]["recall_at_frr"]["0.01"] == 1.0
    assert r["per_defect"]["chip"]["recall_at_frr"]["0.01"] == 0.2
    assert r["per_defect"]["chip"]["recall_at_frr"]["0.001"] is None
    assert one["recall"] == 0.6
    table = to_markdown(r)
    assert "recall @ 1 % FRR" in table and "| 60.0 % |" in table and "n too small" in table
    json.dumps(r, allow_nan=False)
