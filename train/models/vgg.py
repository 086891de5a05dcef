"""VGG19 blocks 1-3 in torchvision's layout, without torchvision, loaded from a local file.

Layer indices follow torchvision's `vgg19().features` so its state dicts load unchanged:
0 conv1_1, 2 conv1_2, 4 pool, 5 conv2_1, 7 conv2_2, 9 pool, 10 conv3_1, 12 conv3_2, 14 conv3_3,
16 conv3_4 (ReLU at the odd indices). Two files are accepted:

- torchvision's full `vgg19-dcbb9e9d.pth` (keys `features.N.*` plus the classifier, ignored);
- ../shared/weights/vgg19_blocks1-3_torchvision_norm.pth (the same keys for blocks 1-3 only).

Both expect RGB in [0, 1] normalised by ImageNet mean/std. Their activation scales differ
(Caffe-trained weights give relu3_4 means about 70), so the hybrid model normalises every block's
output before a learned layer sees it, and either file works.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (features index, in channels, out channels) per conv, grouped by block
BLOCKS = (
    ((0, 3, 64), (2, 64, 64)),
    ((5, 64, 128), (7, 128, 128)),
    ((10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256)),
)
BLOCK_CHANNELS = tuple(block[-1][2] for block in BLOCKS)  # 64, 128, 256
WEIGHT_KEYS = tuple(
    f"features.{i}.{p}" for block in BLOCKS for i, _, _ in block for p in ("weight", "bias")
)


class WeightsError(RuntimeError):
    """The VGG19 weight file is missing or is not a VGG19 state dict."""


class VGG19Blocks(nn.Module):
    """RGB in [0, 1] -> the outputs of blocks 1, 2 and 3 before their max pool (full, 1/2 and
    1/4 resolution) or after it; 64, 128 and 256 channels."""

    mean: torch.Tensor  # buffers, typed for mypy (register_buffer sets them)
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleDict()
        for block in BLOCKS:
            for index, cin, cout in block:
                self.features[str(index)] = nn.Conv2d(cin, cout, 3, padding=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, pooled: bool = False) -> list[torch.Tensor]:
        """pooled: each block's output after its max pool (1/2, 1/4, 1/8 resolution)."""
        h = (x - self.mean) / self.std
        outputs = []
        for b, block in enumerate(BLOCKS):
            if b > 0 and not pooled:
                h = nn.functional.max_pool2d(h, 2)
            for index, _, _ in block:
                h = torch.relu(self.features[str(index)](h))
            if pooled:
                h = nn.functional.max_pool2d(h, 2)
            outputs.append(h)
        return outputs

    def load_file(self, path: Path) -> None:
        """Load torchvision-layout weights; anything but a readable VGG19 file is a WeightsError."""
        if not path.is_file():
            raise WeightsError(
                f"VGG19 weights not found: {path}. Provide torchvision's vgg19-dcbb9e9d.pth or "
                "vgg19_blocks1-3_torchvision_norm.pth (set model.vgg_weights or --vgg-weights); "
                "nothing is downloaded at run time"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a corrupt or foreign file
            raise WeightsError(f"{path}: not a readable torch state dict ({exc})") from exc
        missing = [k for k in WEIGHT_KEYS if k not in state]
        if missing:
            raise WeightsError(
                f"{path}: not a torchvision VGG19 state dict (missing {missing[:3]} …)"
            )
        for block in BLOCKS:
            for index, cin, cout in block:
                conv = cast(nn.Conv2d, self.features[str(index)])
                w, b = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
                if tuple(w.shape) != (cout, cin, 3, 3):
                    raise WeightsError(
                        f"{path}: features.{index}.weight is {tuple(w.shape)}, "
                        f"VGG19 has {(cout, cin, 3, 3)}"
                    )
                conv.weight.data.copy_(w.float())
                assert conv.bias is not None  # every conv is built with a bias
                conv.bias.data.copy_(b.float())

    def state_dict_torchvision(self) -> dict[str, torch.Tensor]:
        """The weights under torchvision's keys (tests write weight files with it)."""
        return {
            f"features.{k}.{p}": getattr(conv, p).detach().clone()
            for k, conv in self.features.items()
            for p in ("weight", "bias")
        }
