"""Training loop for every model family (the family supplies its objective)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

# (model, clean batch, noisy batch) -> scalar loss; see inspectd.train.models.Family
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]



@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 200
    batch_size: int = 16
    lr: float = 2e-4
    seed: int = 0
    early_stop_start: int = 0  # epoch from which early stopping may end the run
    patience: int = 50  # epochs without a better validation loss before stopping
    noise_sigma: float = 0.0  # Gaussian input noise during training only (hybrid paper)
    device: str = "cpu"
    # bf16 autocast for forward and loss (weights and optimiser stay fp32); None: on CUDA only.
    # bf16 needs no loss scaling; exp/log/softmax/sums run in fp32 under autocast.
    mixed_precision: bool | None = None
    time_budget_s: float | None = None  # stop after the epoch that passes it (a GPU slot)


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (train, val) per epoch
    stopped: str = "epochs"  # epochs | early stop | time budget


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of n good images (the papers' 80/20)."""
    if n < 2:
        raise ValueError(f"need at least 2 good images to split, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may use the global generator


def _to_tensor(images: np.ndarray, device: str) -> torch.Tensor:
    # Decoded once, kept on the device for the whole run (not re-read per epoch). Contiguous
    # NCHW: the permuted (channels-last) layout crashed torch 2.13's CPU backward of the hybrid
    # model with a segmentation fault.
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x.to(device).float().div_(255.0)


def train_model(
    model: nn.Module,
    train_images: np.ndarray,
    val_images: np.ndarray,
    settings: TrainSettings,
    objective: Objective,
    *,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Adam on `objective(model, x, noisy_x)`; keeps the weights of the best validation epoch.

    images: uint8 N x H x W x 3 RGB, already preprocessed. With `checkpoint`, the best state is
    saved there and a run resumes from it when the file exists.
    """
    seed_everything(settings.seed)
    device = settings.device
    amp = settings.mixed_precision
    autocast = partial(torch.autocast, torch.device(device).type, dtype=torch.bfloat16,
                       enabled=device.startswith("cuda") if amp is None else amp)  # fmt: skip
    model.to(device)
    xs, xv = _to_tensor(train_images, device), _to_tensor(val_images, device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)

    start_epoch, best, best_epoch = 0, float("inf"), -1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history: list[tuple[float, float]] = []
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state["epoch"]
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    t0 = time.monotonic()
    stopped = "epochs"
    bar = tqdm(range(start_epoch, settings.epochs), desc="train", unit="epoch", disable=not progress)
    epoch = start_epoch - 1
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for i in range(0, len(xs), settings.batch_size):
            x = xs[perm[i : i + settings.batch_size].to(device)]
            noisy = x
            if settings.noise_sigma > 0:
                noisy = x + torch.randn(x.shape, generator=gen).to(device) * settings.noise_sigma
            with autocast():
                loss = objective(model, x, noisy).float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
        with autocast():
            val = evaluate_loss(model, xv, settings.batch_size, objective)
        history.append((total / len(xs), val))
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {"model": best_state, "optimizer": opt.state_dict(), "epoch": epoch, "best": best},
                    checkpoint,
                )
        bar.set_postfix(loss=f"{history[-1][0]:.4f}", val=f"{val:.4f}", best=f"{best:.4f}@{best_epoch}")
        if epoch >= settings.early_stop_start and epoch - best_epoch >= settings.patience:
            stopped = "early stop"
            break
        if settings.time_budget_s is not None and time.monotonic() - t0 >= settings.time_budget_s:
            stopped = "time budget"
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        epochs_run=epoch + 1,
        best_epoch=best_epoch,
        best_val_loss=best,
        seconds=time.monotonic() - t0,
        history=history,
        stopped=stopped,
    )


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    objective: Objective,
) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        total += objective(model, x, x).item() * len(x)
    return total / len(images)
