"""Model families for training: each runtime architecture (``inspectd.models``) with how it is
trained (its objective and the paper's schedule) or fitted.

`patchcore` has no objective: it is fitted (inspectd.train.memory), not trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, cast

import torch
from torch import nn

from inspectd.models import ARCHITECTURES, Architecture, vivano
from inspectd.train.losses import l2_ssim_loss

# (model, clean batch, noisy batch) -> scalar loss
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def reconstruction_objective(
    model: nn.Module, x: torch.Tensor, noisy: torch.Tensor
) -> torch.Tensor:
    """L2 + (1 - SSIM) of the clean image and the reconstruction of its noisy copy."""
    return l2_ssim_loss(x, model(noisy))


def own_objective(model: nn.Module, x: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """The model's own loss (vivano: reconstruction, KL and mixture likelihood)."""
    return cast(vivano.ViVAno, model).loss(x, noisy)


@dataclass(frozen=True)
class Family(Architecture):
    # None: fitted from good images (inspectd.train.memory), not trained by gradient
    objective: Objective | None = None
    training: dict[str, Any] = field(default_factory=dict)  # the paper's TrainSettings values


def _family(name: str, objective: Objective | None, training: dict[str, Any]) -> Family:
    arch = ARCHITECTURES[name]
    return Family(
        **{f.name: getattr(arch, f.name) for f in fields(arch)},
        objective=objective,
        training=training,
    )


FAMILIES = {
    "ae": _family(
        "ae",
        reconstruction_objective,
        {"epochs": 200, "batch_size": 16, "lr": 2e-4, "patience": 50},
    ),
    # Adam lr 1e-4, batch 8, up to 2000 epochs, early stopping from epoch 800, patience 300
    "hybrid": _family(
        "hybrid",
        reconstruction_objective,
        {"epochs": 2000, "batch_size": 8, "lr": 1e-4, "early_stop_start": 800, "patience": 300},
    ),
    # 200 epochs, batch 16, lr 1e-5; the paper names no early stopping
    "vivano": _family(
        "vivano", own_objective, {"epochs": 200, "batch_size": 16, "lr": 1e-5, "patience": 200}
    ),
    "patchcore": _family("patchcore", None, {}),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (allowed: {', '.join(FAMILIES)})")
    return FAMILIES[name]
