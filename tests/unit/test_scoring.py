"""The scoring head (torch, exported) against a direct numpy transcription of the formula.

The numpy code below is a test reference only; the daemon never scores in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inspectd.models.scoring import MsgmsL2Head  # noqa: E402

C = 0.0026


def conv3x3_zero_pad(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    h, w = img.shape
    p = np.pad(img, 1)
    out = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            out += k[dy, dx] * p[dy : dy + h, dx : dx + w]
    return out


def gms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    px = np.array([[1, 0, -1]] * 3, dtype=np.float64) / 3
    py = px.T
    ma = np.sqrt(conv3x3_zero_pad(a, px) ** 2 + conv3x3_zero_pad(a, py) ** 2 + 1e-12)
    mb = np.sqrt(conv3x3_zero_pad(b, px) ** 2 + conv3x3_zero_pad(b, py) ** 2 + 1e-12)
    return (2 * ma * mb + C) / (ma**2 + mb**2 + C)


def pool2(a: np.ndarray) -> np.ndarray:
    h, w = a.shape
    return a[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), edge-clamped."""
    h, w = a.shape
    H, W = size

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        s = np.clip(s, 0, None)
        i0 = np.minimum(np.floor(s).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    y0, y1, fy = coords(H, h)
    x0, x1, fx = coords(W, w)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


def mean_filter(a: np.ndarray, k: int) -> np.ndarray:
    """k x k mean over the pixels that exist (no zero padding counted)."""
    h, w = a.shape
    r = k // 2
    out = np.empty_like(a)
    for y in range(h):
        for x in range(w):
            out[y, x] = a[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].mean()
    return out


def reference_map(x: np.ndarray, xr: np.ndarray, k: int = 21, scales: int = 4) -> np.ndarray:
    """x, xr: H x W x 3 in [0, 1] -> anomaly map H x W."""
    a, b = x.mean(axis=2), xr.mean(axis=2)
    size = a.shape
    total = gms(a, b)
    for _ in range(1, scales):
        a, b = pool2(a), pool2(b)
        total = total + bilinear(gms(a, b), size)
    msgms = total / scales
    l2 = ((x - xr) ** 2).mean(axis=2)
    return mean_filter(1 - msgms, k) + mean_filter(l2, k)


@pytest.mark.parametrize("size,k", [(32, 21), (24, 5), (40, 7)])
def test_scoring_head_matches_numpy_transcription(size: int, k: int) -> None:
    rng = np.random.default_rng(size)
    x = rng.random((size, size, 3))
    xr = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    xr[size // 4 : size // 2, size // 4 : size // 2] = 0.9  # a blob the map must show
    want = reference_map(x, xr, k=k)

    head = MsgmsL2Head(mean_filter=k)
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()  # noqa: E731
    amap, score = head(t(x), t(xr))
    np.testing.assert_allclose(amap[0].numpy(), want, atol=2e-5)
    assert score.item() == pytest.approx(want.max(), abs=2e-5)


def test_identical_images_score_zero_and_a_defect_raises_the_map_where_it_is() -> None:
    head = MsgmsL2Head()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    amap, score = head(x, x.clone())
    assert torch.all(score.abs() < 1e-5)
    damaged = x.clone()
    damaged[1, :, 40:50, 10:20] = 1.0
    amap, score = head(x, damaged)
    assert score[0] < 1e-5 < score[1]
    peak = np.unravel_index(amap[1].argmax().item(), (64, 64))
    assert 30 <= peak[0] <= 60 and 0 <= peak[1] <= 30


def test_even_mean_filter_is_refused() -> None:
    with pytest.raises(ValueError, match="odd"):
        MsgmsL2Head(mean_filter=20)
