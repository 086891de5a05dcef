"""Transformer pieces shared by the hybrid and ViV-Ano models.

Attention runs through `scaled_dot_product_attention` in torch (fused kernels that never hold
the N x Lq x Lk score matrix: the hybrid's skip-1 attention is 50176 x 784 scores per head and
image) and is written out (matmul -> softmax -> matmul) while exporting, so the ONNX graph is
plain MatMul/Softmax that TensorRT's parser fuses. The spatial-reduction variant (PVT) is the
same code with keys and values taken from a coarser map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_FUSED = True  # False: the written-out path in torch too (bench/train_speed.py compares them)


@contextlib.contextmanager
def written_out_attention() -> Iterator[None]:
    """Within this block attention materialises its scores, as before the fused path."""
    global _FUSED
    before, _FUSED = _FUSED, False
    try:
        yield
    finally:
        _FUSED = before


class Attention(nn.Module):
    """Multi-head attention of queries `q_in` (N x Lq x D) over `kv_in` (N x Lk x D)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, length, d = t.shape
        return t.reshape(n, length, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor | None = None) -> torch.Tensor:
        kv_in = q_in if kv_in is None else kv_in
        q = self._split(self.q(q_in))
        k, v = (self._split(t) for t in self.kv(kv_in).chunk(2, dim=-1))
        if _FUSED and not torch.onnx.is_in_onnx_export():
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:
            out = self.drop(torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)) @ v
        return self.drop(self.proj(out.transpose(1, 2).reshape(q_in.shape)))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + MSA(LN(x)), then x + MLP(LN(x)), dropout in both."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Patchify a C x H x W map into tokens, add learned positions, run `depth` blocks.

    Returns N x (H/P * W/P) x D tokens in row-major patch order (and the class token first when
    `class_token`).
    """

    def __init__(
        self,
        in_channels: int,
        grid: tuple[int, int],
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        class_token: bool = False,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)  # = linear per patch
        tokens = grid[0] * grid[1] + (1 if class_token else 0)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        return self.norm(self.blocks(self.drop(t + self.pos)))


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """N x L x D tokens (row-major) -> N x D x h x w."""
    n, _, d = tokens.shape
    return tokens.transpose(1, 2).reshape(n, d, grid[0], grid[1])
