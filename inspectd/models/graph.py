"""The one graph from pixels to anomaly map and score, as exported and as evaluated in torch."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from inspectd.models.scoring import MsgmsL2Head


class InferenceResult(NamedTuple):
    """Output names of the exported graph (ONNX output names come from these fields)."""

    anomaly_map: torch.Tensor  # float32 N x H x W
    score: torch.Tensor  # float32 N


INPUT_NAME = "image"  # uint8 N x H x W x 3, RGB, already preprocessed (inspectd.preprocess)


class InspectionGraph(nn.Module):
    """uint8 NHWC -> [0, 1] NCHW -> reconstruction model -> scoring head.

    Normalisation lives here, not in the daemon, so every backend sees the same arithmetic.
    Models that want other input statistics (ImageNet mean/std for VGG) normalise inside
    themselves and still reconstruct in [0, 1].
    """

    def __init__(self, model: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.head = head if head is not None else MsgmsL2Head()

    def forward(self, image: torch.Tensor) -> InferenceResult:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        amap, score = self.head(x, self.model(x))
        return InferenceResult(amap, score)
