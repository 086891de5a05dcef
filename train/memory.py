"""Fitting the feature-memory family: patch features of good images -> coreset -> memory.

This is the family's training: no gradients, one pass over the images. The features of all
images are held at once (N x h*w x D float32: 200 images at 224 px with EfficientNet-Lite0's
152 channels are 95 MB); past `max_patches` a seeded random subset of them goes to the coreset,
which bounds the fit's memory and time on large sets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from inspectd.models.patchcore import PatchCore
from inspectd.train.coreset import greedy_coreset, nearest_neighbours

MAX_PATCHES = 2_000_000  # 1.2 GB of Lite0 features; more are subsampled before the coreset
SCALE_FLOOR = 0.05  # smallest channel spread used, as a share of the mean spread


@dataclass(frozen=True)
class FitResult:
    images: int
    patches: int  # patches the coreset chose from
    memory: int  # patches kept
    seconds: float
    feature_seconds: float
    coreset_seconds: float


@torch.no_grad()
def fit_memory(
    model: PatchCore,
    images: np.ndarray,
    *,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    max_patches: int = MAX_PATCHES,
    progress: bool = True,
) -> FitResult:
    """Fill `model`'s memory from good `images` (uint8 N x H x W x 3 RGB, preprocessed)."""
    if len(images) == 0:
        raise ValueError("patchcore needs at least one good image to fit")
    t0 = time.monotonic()
    model.to(device).eval()
    feats = torch.empty(0)
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="features", unit="batch", disable=not progress, leave=False):
        x = torch.from_numpy(images[i : i + batch_size]).to(device)
        f = model.patch_features(x.permute(0, 3, 1, 2).float() / 255.0).cpu()
        if i == 0:  # filled in place: no list of chunks and a concatenated copy beside it
            feats = torch.empty(len(images), *f.shape[1:])
        feats[i : i + len(f)] = f
    feats = feats.flatten(0, 1)
    t_features = time.monotonic() - t0
    n_all = len(feats)
    if n_all > max_patches:
        gen = torch.Generator().manual_seed(seed)
        feats = feats[torch.randperm(n_all, generator=gen)[:max_patches]]
    centre = feats.mean(0)
    feats -= centre
    scale = None
    if model.standardise:
        # a floor: a channel (nearly) constant on good parts must not turn noise into scores
        std = feats.std(0)
        scale = std.clamp_min(SCALE_FLOOR * float(std.mean()))
        feats /= scale
    chosen = greedy_coreset(feats, model.memory_size, seed=seed, progress=progress)
    memory = feats[chosen].clone()
    del feats
    support = nearest_neighbours(memory, model.neighbours)
    if support.shape[1] < model.neighbours:  # a memory smaller than b: repeat the farthest
        pad = support[:, -1:].expand(-1, model.neighbours - support.shape[1])
        support = torch.cat([support, pad], 1)
    model.set_memory(memory, centre, support, scale)
    model.cpu()
    seconds = time.monotonic() - t0
    return FitResult(
        images=len(images),
        patches=min(n_all, max_patches),
        memory=len(memory),
        seconds=round(seconds, 1),
        feature_seconds=round(t_features, 1),
        coreset_seconds=round(seconds - t_features, 1),
    )
