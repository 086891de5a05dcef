"""Model families: how each is built, trained (or fitted) and scored.

The one registry that training, export, evaluation and the torch engine use, so a family's
scoring head and objective are chosen in one place. `patchcore` has no objective: it is fitted
(inspectd.train.memory), not trained. A bundle records the family and its
constructor `params`; `load_graph` rebuilds the exported graph from the bundle's manifest
(family, params and its scoring section, so an old bundle's head is the one it was built with)
and `model.pt`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from inspectd.bundle import Bundle, ScoringSpec
from inspectd.train.graph import InspectionGraph
from inspectd.train.losses import l2_ssim_loss
from inspectd.train.models import ae, hybrid, patchcore, vivano
from inspectd.train.scoring import scoring_head


def _scoring(method: str, *settings: str) -> dict[str, Any]:
    """A manifest scoring section: `method` and its own settings (ScoringSpec's defaults)."""
    return ScoringSpec(method=method).model_dump(include={"method", *settings})  # type: ignore[arg-type]


MSGMS_L2 = _scoring("msgms_l2", "mean_filter", "scales", "c")


def reconstruction_objective(
    model: nn.Module, x: torch.Tensor, noisy: torch.Tensor
) -> torch.Tensor:
    """L2 + (1 - SSIM) of the clean image and the reconstruction of its noisy copy."""
    return l2_ssim_loss(x, model(noisy))


def own_objective(model: nn.Module, x: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """The model's own loss (vivano: reconstruction, KL and mixture likelihood)."""
    return cast(vivano.ViVAno, model).loss(x, noisy)


@dataclass(frozen=True)
class Family:
    name: str
    model: Callable[..., nn.Module]
    # None: fitted from good images (inspectd.train.memory), not trained by gradient
    objective: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None
    scoring: dict[str, Any]  # the manifest's scoring section
    settled: str  # open points of the paper this implementation settles
    training: dict[str, Any] = field(default_factory=dict)  # the paper's TrainSettings values
    # constructor values of bundles written before a parameter existed (absent from their params)
    legacy: dict[str, Any] = field(default_factory=dict)

    def params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every constructor argument with its value: defaults updated by `overrides`."""
        defaults = {name: p.default for name, p in inspect.signature(self.model).parameters.items()}
        unknown = sorted(set(overrides or {}) - set(defaults))
        if unknown:
            raise ValueError(
                f"{self.name} has no parameter {', '.join(unknown)} "
                f"(allowed: {', '.join(defaults)})"
            )
        params = {**defaults, **(overrides or {})}
        # tuples become lists so the manifest (YAML) round-trips to equal values
        return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}

    def create(self, params: dict[str, Any]) -> nn.Module:
        return self.model(**params)

    def graph(self, model: nn.Module, scoring: ScoringSpec | None = None) -> InspectionGraph:
        """The exported graph: `model` and the head of `scoring` (default: this family's)."""
        spec = scoring or ScoringSpec.model_validate(self.scoring)
        if spec.method != self.scoring["method"]:
            raise ValueError(f"{self.name} scores by {self.scoring['method']}, not {spec.method}")
        return InspectionGraph(model, scoring_head(spec))


FAMILIES = {
    "ae": Family(
        "ae",
        ae.ConvAutoencoder,
        reconstruction_objective,
        MSGMS_L2,
        "sigmoid output; L2 + (1 - SSIM); RGB",
        {"epochs": 200, "batch_size": 16, "lr": 2e-4, "patience": 50},
    ),
    # Adam lr 1e-4, batch 8, up to 2000 epochs, early stopping from epoch 800, patience 300
    "hybrid": Family(
        "hybrid",
        hybrid.HybridAE,
        reconstruction_objective,
        MSGMS_L2,
        hybrid.SETTLED,
        {"epochs": 2000, "batch_size": 8, "lr": 1e-4, "early_stop_start": 800, "patience": 300},
        hybrid.LEGACY_PARAMS,
    ),
    # 200 epochs, batch 16, lr 1e-5; the paper names no early stopping
    "vivano": Family(
        "vivano",
        vivano.ViVAno,
        own_objective,
        {"method": "nll"},
        vivano.SETTLED,
        {"epochs": 200, "batch_size": 16, "lr": 1e-5, "patience": 200},
    ),
    # training-free: a coreset of good patch features, Euclidean nearest-neighbour distance
    "patchcore": Family(
        "patchcore",
        patchcore.PatchCore,
        None,
        _scoring("patch_distance", "blur_sigma", "image_score"),
        patchcore.SETTLED,
    ),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (allowed: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def load_graph(bundle: Bundle) -> InspectionGraph:
    """The inspection graph of a bundle from its `model.pt` (a state dict) and its manifest, in
    eval mode. ValueError when the bundle ships no weights."""
    m = bundle.manifest
    if m.model.checkpoint is None:
        raise ValueError(f"{bundle.path}: no trained weights (model.checkpoint is not set)")
    fam = family(m.model.family)
    model = fam.create({**fam.legacy, **m.model.params})
    checkpoint = Path(bundle.path) / m.model.checkpoint
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return fam.graph(model, m.scoring).eval()
