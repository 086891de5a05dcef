"""The feature-memory family's small parts: the greedy coreset, the neighbour table and the
patch-distance head (blur and image scores)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from inspectd.models.scoring import PatchDistanceHead  # noqa: E402
from inspectd.train.coreset import greedy_coreset, nearest_neighbours  # noqa: E402


def clusters(sizes: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight clusters of very different sizes far apart, and each point's cluster."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), 16, generator=gen) * 100
    points = torch.cat(
        [c + torch.randn(n, 16, generator=gen) * 0.1 for c, n in zip(centres, sizes, strict=True)]
    )
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return points, labels


def test_the_coreset_covers_rare_clusters_a_random_subset_misses() -> None:
    """k = the number of clusters: greedy k-center takes one point of each, the rare ones
    included; a random pick of the same size lands mostly in the big cluster."""
    points, labels = clusters([5000, 3, 3, 3, 3])
    chosen = greedy_coreset(points, 5)
    assert sorted(labels[chosen].tolist()) == [0, 1, 2, 3, 4]
    random = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:5]
    assert len(set(labels[random].tolist())) < 5


def test_the_coreset_is_seeded_greedy_and_grows_by_prefix() -> None:
    """Deterministic per seed; a larger memory starts with the smaller one (greedy choice)."""
    points = torch.randn(2000, 300, generator=torch.Generator().manual_seed(1))
    small, large = greedy_coreset(points, 50), greedy_coreset(points, 200)
    assert torch.equal(large[:50], small)
    assert torch.equal(greedy_coreset(points, 50), small)
    assert len(set(large.tolist())) == 200  # never the same patch twice
    assert torch.equal(greedy_coreset(points[:30], 50), torch.arange(30))  # fewer than k: all


def test_each_memory_patch_lists_itself_then_its_nearest() -> None:
    points = torch.tensor([[0.0], [1.0], [10.0], [10.5], [3.0]])
    table = nearest_neighbours(points, 3, chunk=2)  # chunked like a large memory
    assert table[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert table[0].tolist() == [0, 1, 4] and table[2].tolist() == [2, 3, 4]


def test_the_blur_keeps_a_flat_map_flat_to_the_border_and_scores_as_asked() -> None:
    x = torch.zeros(2, 3, 64, 64)
    flat = torch.full((2, 1, 8, 8), 3.0)
    reweighted = torch.tensor([1.0, 2.0])
    amap, score = PatchDistanceHead(4.0, "max")(x, (flat, reweighted))
    assert amap.shape == (2, 64, 64)
    torch.testing.assert_close(amap, torch.full_like(amap, 3.0))  # no darker edge
    torch.testing.assert_close(score, torch.tensor([3.0, 3.0]))

    spike = torch.zeros(2, 1, 8, 8)
    spike[:, 0, 0, 0] = 8.0  # one patch in a corner
    amap, peak = PatchDistanceHead(4.0, "map_max")(x, (spike, reweighted))
    assert float(amap[0, 0, 0]) == pytest.approx(float(peak[0]))  # the blurred peak stays there
    assert 0 < float(peak[0]) < 8.0  # spread by the blur
    _, plain = PatchDistanceHead(4.0, "max")(x, (spike, reweighted))
    _, paper = PatchDistanceHead(4.0, "reweighted")(x, (spike, reweighted))
    assert plain.tolist() == [8.0, 8.0] and paper.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="image_score"):
        PatchDistanceHead(4.0, "mean")


def test_top_mean_scores_an_area_above_a_spot_of_the_same_peak() -> None:
    """image_score top_mean: the mean of the top share of the (pooled) blurred map. A defect
    spread over an area outscores a single hot spot of the same height, which max cannot tell
    apart; on a flat map it is the map's value."""
    x = torch.zeros(2, 3, 64, 64)
    grid = torch.zeros(2, 1, 8, 8)
    grid[0, 0, 3, 3] = 8.0  # a spot
    grid[1, 0, 2:6, 2:6] = 8.0  # an area, same peak
    none = torch.zeros(2)
    head = PatchDistanceHead(0.0, "top_mean", top_fraction=0.25)
    amap, score = head(x, (grid, none))
    assert float(score[1]) > 2 * float(score[0]) > 0
    pooled = torch.nn.functional.avg_pool2d(amap[:, None], 4).flatten(1)
    want = pooled.topk(round(0.25 * pooled.shape[1]), dim=1).values.mean(1)
    torch.testing.assert_close(score, want)
    _, flat = head(x, (torch.full((2, 1, 8, 8), 3.0), none))
    torch.testing.assert_close(flat, torch.tensor([3.0, 3.0]))
    with pytest.raises(ValueError, match="top_fraction"):
        PatchDistanceHead(4.0, "top_mean", top_fraction=0.0)
