"""Model families: how each is built, trained and scored.

The one registry that training, export, evaluation and the torch engine use, so a family's
scoring head and objective are chosen in one place. A bundle records the family and its
constructor `params`; `load_graph` rebuilds the exported graph from them and `model.pt`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inspectd.train.graph import InspectionGraph
from inspectd.train.losses import l2_ssim_loss
from inspectd.train.models import ae, hybrid, vivano
from inspectd.train.scoring import LikelihoodHead, MsgmsL2Head

MSGMS_L2 = {"method": "msgms_l2", "mean_filter": 21, "scales": 4, "c": 0.0026}


def reconstruction_objective(model: nn.Module, x: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """L2 + (1 - SSIM) of the clean image and the reconstruction of its noisy copy."""
    return l2_ssim_loss(x, model(noisy))


def own_objective(model: nn.Module, x: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return model.loss(x, noisy)


@dataclass(frozen=True)
class Family:
    name: str
    model: Callable[..., nn.Module]
    head: Callable[[], nn.Module]
    objective: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    scoring: dict[str, Any]  # the manifest's scoring section
    settled: str  # open points of the paper this implementation settles
    training: dict[str, Any] = field(default_factory=dict)  # the paper's TrainSettings values

    def params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every constructor argument with its value: defaults updated by `overrides`."""
        defaults = {
            name: p.default for name, p in inspect.signature(self.model).parameters.items()
        }
        unknown = sorted(set(overrides or {}) - set(defaults))
        if unknown:
            raise ValueError(f"{self.name} has no parameter {', '.join(unknown)} "
                             f"(allowed: {', '.join(defaults)})")
        params = {**defaults, **(overrides or {})}
        # tuples become lists so the manifest (YAML) round-trips to equal values
        return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}

    def create(self, params: dict[str, Any]) -> nn.Module:
        return self.model(**params)

    def graph(self, model: nn.Module) -> InspectionGraph:
        return InspectionGraph(model, self.head())


FAMILIES = {
    "ae": Family("ae", ae.ConvAutoencoder, MsgmsL2Head, reconstruction_objective, MSGMS_L2,
                 "sigmoid output; L2 + (1 - SSIM); RGB",
                 {"epochs": 200, "batch_size": 16, "lr": 2e-4, "patience": 50}),
    # Adam lr 1e-4, batch 8, up to 2000 epochs, early stopping from epoch 800, patience 300
    "hybrid": Family("hybrid", hybrid.HybridAE, MsgmsL2Head, reconstruction_objective, MSGMS_L2,
                     hybrid.SETTLED,
                     {"epochs": 2000, "batch_size": 8, "lr": 1e-4, "early_stop_start": 800,
                      "patience": 300}),
    # 200 epochs, batch 16, lr 1e-5; the paper names no early stopping
    "vivano": Family("vivano", vivano.ViVAno, LikelihoodHead, own_objective, {"method": "nll"},
                     vivano.SETTLED,
                     {"epochs": 200, "batch_size": 16, "lr": 1e-5, "patience": 200}),
}  # fmt: skip


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (allowed: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def load_graph(checkpoint: Path, family_name: str, params: dict[str, Any]) -> InspectionGraph:
    """The inspection graph of a bundle from its `model.pt` (a state dict), in eval mode."""
    fam = family(family_name)
    model = fam.create(params)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return fam.graph(model).eval()
