"""The scoring head: reconstruction -> anomaly map and image score.

This is the only implementation of scoring (MsgmsL2Head for the reconstruction models,
LikelihoodHead for vivano). It is composed into the exported graph
(`inspectd.models.graph.InspectionGraph`), so the daemon gets maps from ONNX Runtime or
TensorRT without re-implementing it, and training-time evaluation uses the same module.

A = mean21(1 - MSGMS(x, x_hat)) + mean21(L2(x, x_hat)),  score = max over pixels of A.

MSGMS follows Zavrtnik et al. (RIAD): gradient magnitude similarity with 3x3 Prewitt kernels on
the channel-mean grey image, at scales 1, 1/2, 1/4, 1/8 (2x2 average pooling between scales),
each scale upsampled bilinearly to full size and averaged. GMS = (2 g1 g2 + c) / (g1^2 + g2^2 + c).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspectd.bundle import ScoringSpec


def scoring_head(spec: ScoringSpec) -> nn.Module:
    """The head a bundle's scoring section describes."""
    if spec.method == "nll":
        return LikelihoodHead()
    if spec.method == "patch_distance":
        return PatchDistanceHead(spec.blur_sigma, spec.image_score, spec.top_fraction)
    return MsgmsL2Head(mean_filter=spec.mean_filter, scales=spec.scales, c=spec.c)


class MsgmsL2Head(nn.Module):
    """Inputs: x, x_hat float N x C x H x W in [0, 1]. Outputs: map N x H x W, score N.

    Settings not given take ScoringSpec's defaults (21, 4, 0.0026): the one place they live."""

    prewitt: torch.Tensor  # a buffer, typed for mypy

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        spec = ScoringSpec(method="msgms_l2", **settings)
        mean_filter, scales, c = spec.mean_filter, spec.scales, spec.c
        if mean_filter % 2 != 1:
            raise ValueError(f"mean_filter must be odd, got {mean_filter}")
        self.mean_filter = mean_filter
        self.scales = scales
        self.c = c
        prewitt_x = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
        kernels = torch.stack([prewitt_x, prewitt_x.t()]).unsqueeze(1)  # 2 x 1 x 3 x 3
        self.register_buffer("prewitt", kernels, persistent=False)

    def _magnitude(self, grey: torch.Tensor) -> torch.Tensor:
        g = F.conv2d(grey, self.prewitt, padding=1)
        # The epsilon keeps sqrt differentiable where the gradient is zero.
        return torch.sqrt(g[:, 0:1] ** 2 + g[:, 1:2] ** 2 + 1e-12)

    def gms(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ma, mb = self._magnitude(a), self._magnitude(b)
        return (2 * ma * mb + self.c) / (ma**2 + mb**2 + self.c)

    def msgms(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Multi-scale GMS map, N x 1 x H x W, 1 where the images agree."""
        size = x.shape[-2:]
        a, b = x.mean(1, keepdim=True), x_hat.mean(1, keepdim=True)
        total = self.gms(a, b)
        for _ in range(1, self.scales):
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
            total = total + F.interpolate(
                self.gms(a, b), size=size, mode="bilinear", align_corners=False
            )
        return total / self.scales

    def _mean(self, m: torch.Tensor) -> torch.Tensor:
        # count_include_pad=False: a true mean at the border, so edges are not scored lower.
        k = self.mean_filter
        return F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 whatever the autocast state or the model's precision (fp16 engines, bf16
        # training): GMS divides differences of small squared gradients.
        with torch.autocast(x.device.type, enabled=False):
            return self._score(x.float(), x_hat.float())

    def _score(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        l2 = ((x - x_hat) ** 2).mean(1, keepdim=True)
        amap = self._mean(1.0 - self.msgms(x, x_hat)) + self._mean(l2)
        amap = amap[:, 0]
        return amap, amap.amax(dim=(1, 2))


class LikelihoodHead(nn.Module):
    """Per-patch negative log-likelihood grid -> map at the input's size (bilinear), score = max.

    Inputs: x N x C x H x W (only its size is used), nll N x 1 x h x w.
    """

    def forward(self, x: torch.Tensor, nll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(nll.device.type, enabled=False):  # fp32, as MsgmsL2Head
            amap = upsample(nll, x)
            return amap, amap.amax(dim=(1, 2))


def upsample(grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """N x 1 x h x w -> N x H x W at x's size (bilinear), in fp32."""
    return F.interpolate(grid.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[
        :, 0
    ]


class PatchDistanceHead(nn.Module):
    """Patch distances -> map at the input's size (bilinear, then a Gaussian blur of
    `blur_sigma` input pixels, as PatchCore), and the image score `image_score`: "max" the
    largest patch distance (the paper without reweighting), "reweighted" the model's eq. 7
    score, "map_max" the blurred map's peak, "top_mean" the mean of the highest `top_fraction`
    of the blurred map (pooled 4 x 4 first, which changes it by < 1 %, so that TensorRT's TopK,
    at most 3840 values, takes it at 320 px too). A defect spread over an area (magnetic_tile's
    uneven surfaces, cracks) raises the top 5 % more than the few hottest pixels of a good part.

    Inputs: x N x C x H x W (only its size is used), (grid N x 1 x h x w, reweighted N).
    The blur is separable and normalised at the border (a zero-padded blur divided by the
    blur of ones), so edges are not scored lower and no padding mode beyond zeros is needed.
    """

    kernel: torch.Tensor  # a buffer, typed for mypy

    def __init__(
        self, blur_sigma: float = 4.0, image_score: str = "max", top_fraction: float = 0.05
    ) -> None:
        super().__init__()
        if image_score not in ("max", "reweighted", "map_max", "top_mean"):
            raise ValueError(
                f"image_score must be max, reweighted, map_max or top_mean, not {image_score}"
            )
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], not {top_fraction}")
        self.image_score, self.top_fraction = image_score, top_fraction
        radius = int(4 * blur_sigma + 0.5)  # 4 sigma, as scipy's gaussian_filter
        self.radius = radius
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / blur_sigma) ** 2) if blur_sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", (k / k.sum()).view(1, 1, 1, -1), persistent=False)

    def _blur(self, m: torch.Tensor) -> torch.Tensor:
        r = self.radius
        if r == 0:
            return m
        row, col = self.kernel, self.kernel.transpose(2, 3)
        blurred = F.conv2d(F.conv2d(m[:, None], row, padding=(0, r)), col, padding=(r, 0))
        # the blur of ones, separable too: one 1-D weight per column and per row
        h, w = m.shape[-2:]
        per_col = F.conv1d(m.new_ones(1, 1, w), self.kernel[0], padding=r)[0, 0]
        per_row = F.conv1d(m.new_ones(1, 1, h), self.kernel[0], padding=r)[0, 0]
        return blurred[:, 0] / (per_row[:, None] * per_col)

    def forward(
        self, x: torch.Tensor, scores: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grid, reweighted = scores
        with torch.autocast(grid.device.type, enabled=False):  # fp32, as the other heads
            amap = self._blur(upsample(grid, x))
            if self.image_score == "max":
                score = grid.float().amax(dim=(1, 2, 3))
            elif self.image_score == "reweighted":
                score = reweighted.float()
            elif self.image_score == "top_mean":
                pooled = F.avg_pool2d(amap[:, None], 4, ceil_mode=True).flatten(1)
                with warnings.catch_warnings():  # the map's size is fixed by the bundle:
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)  # k a constant
                    k = max(1, int(self.top_fraction * int(pooled.shape[1]) + 0.5))
                score = pooled.topk(k, dim=1).values.mean(dim=1)
            else:
                score = amap.amax(dim=(1, 2))
            return amap, score
