"""Training losses for the reconstruction models.

Losses run in fp32 whatever the autocast state: SSIM's variance is E[x^2] - mu^2, a difference
of near-equal numbers that bf16 (8 bits of mantissa) cannot hold on low-contrast images
(1 - SSIM 0.34 instead of 0.46 on grey 0.5 +- 0.02, and negative variances in some windows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Mean SSIM of two N x C x H x W batches (Wang et al. 2004; the papers' K1, K2), in fp32."""
    with torch.autocast(x.device.type, enabled=False):
        return _ssim(x.float(), y.float(), window, sigma, k1, k2, data_range)


def _ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    window: int,
    sigma: float,
    k1: float,
    k2: float,
    data_range: float,
) -> torch.Tensor:
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c, x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x = F.conv2d(x, w, groups=c)
    mu_y = F.conv2d(y, w, groups=c)
    var_x = F.conv2d(x * x, w, groups=c) - mu_x**2
    var_y = F.conv2d(y * y, w, groups=c) - mu_y**2
    cov = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.mean()


def l2_ssim_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """L2(X, X^) + (1 - SSIM(X, X^)), the hybrid paper's loss (ae baseline too), in fp32."""
    with torch.autocast(x.device.type, enabled=False):
        x, x_hat = x.float(), x_hat.float()
        return F.mse_loss(x_hat, x) + (1.0 - ssim(x, x_hat))
