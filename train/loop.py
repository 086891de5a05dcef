"""Training loop for every model family (the family supplies its objective)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

# (model, clean batch, noisy batch) -> scalar loss; see inspectd.train.families.Family
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 200
    batch_size: int = 16
    lr: float = 2e-4
    seed: int = 0
    # Early stopping may end the run once `patience` epochs pass without a better validation
    # loss, counted from the later of the best epoch and `early_stop_start`: the hybrid paper's
    # "from epoch 800 with patience 300" cannot stop before epoch 1100.
    early_stop_start: int = 0
    patience: int = 50
    # Gaussian input noise during training only (hybrid paper). "uniform": each image draws its
    # sigma from [0, noise_sigma] (the paper's sigma is "the maximum standard deviation");
    # "fixed": every image gets noise_sigma.
    noise_sigma: float = 0.0
    noise: str = "uniform"
    device: str = "cpu"
    # bf16 autocast for forward and loss (weights and optimiser stay fp32); None: on CUDA only.
    # bf16 needs no loss scaling; losses run in fp32 (inspectd.train.losses).
    mixed_precision: bool | None = None
    time_budget_s: float | None = None  # stop after the epoch that passes it (a GPU slot)
    # torch.compile the model for training (CUDA; the first epochs pay the compile time)
    compile: bool = False


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
    # Decoded once, kept on the device for the whole run (not re-read per epoch).
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    x = x.to(device).float().div_(255.0)
    # channels_last on CUDA only: convolutions run in their native layout there; on the CPU it
    # crashed torch 2.13's backward of the hybrid model with a segmentation fault.
    return x.to(memory_format=torch.channels_last) if x.is_cuda else x


def add_noise(x: torch.Tensor, sigma_max: float, mode: str, gen: torch.Generator) -> torch.Tensor:
    """x + N(0, sigma^2), sigma per image from U[0, sigma_max] ("uniform") or sigma_max ("fixed");
    drawn on x's device with `gen` (a generator of that device), so nothing crosses the bus."""
    if sigma_max <= 0:
        return x
    if mode == "uniform":
        sigma = torch.rand((len(x), 1, 1, 1), generator=gen, device=x.device) * sigma_max
    elif mode == "fixed":
        sigma = torch.full((len(x), 1, 1, 1), sigma_max, device=x.device)
    else:
        raise ValueError(f"noise must be 'uniform' or 'fixed', got {mode!r}")
    return x + torch.randn(x.shape, generator=gen, device=x.device) * sigma


def _stale(epoch: int, best_epoch: int, settings: TrainSettings) -> bool:
    """Early stopping: `patience` epochs without improvement, counted from early_stop_start."""
    since = max(best_epoch, settings.early_stop_start - 1)
    return epoch - since >= settings.patience


CHECKPOINT_EVERY_S = 120.0  # the resumable checkpoint: at most this often, and at the end


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
    saved there (every CHECKPOINT_EVERY_S at most, and at the end) and a run resumes from it
    when the file exists. The loop reads the loss back to the host once per epoch, not per
    step, so a GPU is never left waiting on Python; the best weights are kept on the device.
    """
    seed_everything(settings.seed)
    device = settings.device
    cuda = torch.device(device).type == "cuda"
    amp = settings.mixed_precision
    autocast = partial(
        torch.autocast,
        torch.device(device).type,
        dtype=torch.bfloat16,
        enabled=cuda if amp is None else amp,
    )
    model.to(device)
    if cuda:  # Module.to takes memory_format; torch's typed overloads leave it out
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # torch.compile of a Module is a Module (OptimizedModule); its stub says only Callable
    step_model = cast(nn.Module, torch.compile(model)) if settings.compile else model
    xs, xv = _to_tensor(train_images, device), _to_tensor(val_images, device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, fused=cuda)
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    order_gen = torch.Generator(device="cpu").manual_seed(settings.seed)

    start_epoch, best, best_epoch = 0, float("inf"), -1
    history: list[tuple[float, float]] = []
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state["epoch"]
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_opt: dict | None = None  # the optimiser state of the best epoch, for the checkpoint
    saved_epoch, saved_at = best_epoch, time.monotonic()

    def save() -> None:
        nonlocal saved_epoch, saved_at
        if checkpoint is None or best_epoch == saved_epoch or best_opt is None:
            return
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": best_state, "optimizer": best_opt, "epoch": best_epoch, "best": best},
            checkpoint,
        )
        saved_epoch, saved_at = best_epoch, time.monotonic()

    t0 = time.monotonic()
    stopped = "epochs"
    bar = tqdm(
        range(start_epoch, settings.epochs), desc="train", unit="epoch", disable=not progress
    )
    epoch = start_epoch - 1
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(xs), generator=order_gen).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, len(xs), settings.batch_size):
            x = xs[perm[i : i + settings.batch_size]]
            noisy = add_noise(x, settings.noise_sigma, settings.noise, gen)
            with autocast():
                loss = objective(step_model, x, noisy).float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(x)
        with autocast():
            val = evaluate_loss(step_model, xv, settings.batch_size, objective)
        history.append((float(total) / len(xs), val))  # the epoch's one host sync
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if checkpoint is not None:
                best_opt = _clone_state(opt.state_dict())
        if time.monotonic() - saved_at >= CHECKPOINT_EVERY_S:
            save()
        bar.set_postfix(
            loss=f"{history[-1][0]:.4f}", val=f"{val:.4f}", best=f"{best:.4f}@{best_epoch}"
        )
        if epoch >= settings.early_stop_start and _stale(epoch, best_epoch, settings):
            stopped = "early stop"
            break
        if settings.time_budget_s is not None and time.monotonic() - t0 >= settings.time_budget_s:
            stopped = "time budget"
            break
    save()
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


def _clone_state(state: dict) -> dict:
    """A deep copy of an optimiser state dict (tensors cloned on their device)."""
    if isinstance(state, dict):
        return {k: _clone_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone_state(v) for v in state]
    return state.detach().clone() if isinstance(state, torch.Tensor) else state


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    objective: Objective,
) -> float:
    """Mean objective over `images` (clean input), read back to the host once."""
    model.eval()
    total = torch.zeros((), device=images.device)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        total += objective(model, x, x).float() * len(x)
    return float(total) / len(images)
