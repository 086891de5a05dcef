"""Greedy coreset selection (k-center), as PatchCore subsamples its memory.

Repeatedly add the point farthest from the points chosen so far, so the kept set covers the
whole feature distribution (rare good variations included) rather than its dense middle, which
a random subset over-samples. Distances are taken on a random Gaussian projection to
`projection_dim` dimensions (Johnson-Lindenstrauss: pairwise distances survive up to a small
factor), as the paper does, which makes each step one pass over N x 128 floats.
"""

from __future__ import annotations

import torch
from tqdm import tqdm


def greedy_coreset(
    points: torch.Tensor,
    k: int,
    *,
    projection_dim: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Indices (int64, k or len(points) if fewer) of a greedy k-center coreset of `points`
    (N x D float). The first point is drawn at random with `seed`; the rest are chosen by
    the rule above."""
    n = len(points)
    if k >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = points.float()
    if x.shape[1] > projection_dim:
        x = x @ (torch.randn(x.shape[1], projection_dim, generator=gen) / projection_dim**0.5)
    # one D x N copy (no N x D one beside it): c @ xt is 3-4x faster than x @ c for torch's
    # fp32 GEMV here, and a column of it is a point
    xt = x.t().contiguous()
    del x
    sq = (xt * xt).sum(0)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=gen))
    # squared distance of every point to the chosen set, updated one centre at a time
    nearest = torch.full((n,), float("inf"))
    for i in tqdm(range(k), desc="coreset", unit="patch", disable=not progress, leave=False):
        c = int(chosen[i])
        d = sq - 2 * (xt[:, c] @ xt) + sq[c]
        torch.minimum(nearest, d, out=nearest)
        if i + 1 < k:
            chosen[i + 1] = int(torch.argmax(nearest))
    return chosen


def nearest_neighbours(points: torch.Tensor, b: int, chunk: int = 4096) -> torch.Tensor:
    """M x min(b, M) indices of each point's nearest points, itself first (Euclidean)."""
    sq = (points * points).sum(1)
    out = []
    for i in range(0, len(points), chunk):
        p = points[i : i + chunk]
        d = (p * p).sum(1, keepdim=True) - 2 * (p @ points.t()) + sq
        # the point itself (distance 0) first, whatever rounding left in d
        d[torch.arange(len(p)), torch.arange(i, i + len(p))] = -1.0
        out.append(d.topk(min(b, len(points)), dim=1, largest=False).indices)
    return torch.cat(out)
