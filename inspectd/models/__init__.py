"""The networks of the model families and how a bundle's graph is rebuilt from them.

This is the runtime half of the registry: a family's architecture, its scoring head and the
constructor values old bundles lack. The torch engine, export and evaluation rebuild a bundle's
graph with ``load_graph``; training adds each family's objective and schedule on top
(``inspectd.train.families``), so the daemon never imports training code (anomalib keeps its
``torch_model.py`` apart from the training glue the same way).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inspectd.bundle import Bundle, ScoringSpec
from inspectd.models import ae, hybrid, patchcore, vivano
from inspectd.models.graph import InspectionGraph
from inspectd.models.scoring import scoring_head


def _scoring(method: str, *settings: str) -> dict[str, Any]:
    """A manifest scoring section: `method` and its own settings (ScoringSpec's defaults)."""
    return ScoringSpec(method=method).model_dump(include={"method", *settings})  # type: ignore[arg-type]


MSGMS_L2 = _scoring("msgms_l2", "mean_filter", "scales", "c")


@dataclass(frozen=True)
class Architecture:
    name: str
    model: Callable[..., nn.Module]
    scoring: dict[str, Any]  # the manifest's scoring section
    settled: str  # open points of the paper this implementation settles
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


ARCHITECTURES = {
    "ae": Architecture("ae", ae.ConvAutoencoder, MSGMS_L2, "sigmoid output; L2 + (1 - SSIM); RGB"),
    "hybrid": Architecture(
        "hybrid", hybrid.HybridAE, MSGMS_L2, hybrid.SETTLED, hybrid.LEGACY_PARAMS
    ),
    "vivano": Architecture("vivano", vivano.ViVAno, {"method": "nll"}, vivano.SETTLED),
    # training-free: a coreset of good patch features, Euclidean nearest-neighbour distance
    "patchcore": Architecture(
        "patchcore",
        patchcore.PatchCore,
        # the mean of the map's top 5 % (docs/models.md: it ranks defects spread over an area,
        # which the paper's max patch misses, and a good part's single hot spot lower)
        {**_scoring("patch_distance", "blur_sigma", "top_fraction"), "image_score": "top_mean"},
        patchcore.SETTLED,
    ),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model family {name!r} (allowed: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def load_graph(bundle: Bundle) -> InspectionGraph:
    """The inspection graph of a bundle from its `model.pt` (a state dict) and its manifest, in
    eval mode. ValueError when the bundle ships no weights."""
    m = bundle.manifest
    if m.model.checkpoint is None:
        raise ValueError(f"{bundle.path}: no trained weights (model.checkpoint is not set)")
    arch = architecture(m.model.family)
    model = arch.create({**arch.legacy, **m.model.params})
    checkpoint = Path(bundle.path) / m.model.checkpoint
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return arch.graph(model, m.scoring).eval()
