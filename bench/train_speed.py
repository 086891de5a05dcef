"""Training-step speed per model, the code path before issue 16 and the current one, in one run.

    .venv/bin/python bench/train_speed.py                      # paper configurations, this device
    .venv/bin/python bench/train_speed.py --device cuda --steps 20
    .venv/bin/python bench/train_speed.py --size 128 --batch 4 # a shape a 2-core CPU finishes

Paper configurations: hybrid at 224 px, batch 8 (VGG19 blocks 1-3, D 512, depth 4, skip-1
attention over 224 x 224 queries); vivano at 512 px, patch 64, batch 16 (D 512, depth 6, the
profile of train/experiments.py). Random weights and images: speed does not depend on them.

- old: attention written out (the N x Lq x Lk score matrix materialised), Adam without the
  fused kernel, contiguous NCHW, the loss read back to the host after every step (`.item()`),
  noise drawn on the CPU and copied over.
- new: the training loop's path (inspectd.train.loop): scaled_dot_product_attention, fused Adam
  and channels_last on CUDA, noise drawn on the device, no host sync inside the epoch; bf16
  autocast on CUDA in both.

The two paths alternate step by step so a change in machine load hits both. Prints images/s of
each and the ratio new / old.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch

from inspectd.models.vit import written_out_attention
from inspectd.train.families import family
from inspectd.train.loop import add_noise

PAPER = {
    "hybrid": ({}, 8),
    "vivano": ({"input_size": 512, "patch": 64, "dim": 512, "depth": 6, "heads": 8}, 16),
}


class CodePath:
    """One model, optimiser and batch set up the way one code path trains."""

    def __init__(self, name: str, params: dict, batch: int, device: str, new: bool) -> None:
        fam = family(name)
        torch.manual_seed(0)
        self.fam, self.new, self.device = fam, new, torch.device(device)
        self.model = fam.create(fam.params(params)).to(self.device).train()
        cuda = self.device.type == "cuda"
        if new and cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(trainable, lr=1e-4, fused=new and cuda)
        size = fam.params(params)["input_size"]
        x = torch.rand(batch, 3, size, size, device=self.device)
        self.x = x.to(memory_format=torch.channels_last) if new and cuda else x
        self.gen = torch.Generator(device=self.device).manual_seed(0)
        self.amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if cuda else nullcontext()
        self.sigma = 0.1 if name == "hybrid" else 0.0

    def step(self) -> None:
        if self.new:
            noisy = add_noise(self.x, self.sigma, "uniform", self.gen)
            attention = nullcontext()
        else:
            noisy = self.x + torch.randn(self.x.shape).to(self.device) * self.sigma
            attention = written_out_attention()
        with attention, self.amp:
            loss = self.fam.objective(self.model, self.x, noisy).float()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if not self.new:
            loss.item()  # the old loop's per-step host sync


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, params: dict, batch: int, device: str, steps: int) -> dict[str, float]:
    paths = {
        "old": CodePath(name, params, batch, device, new=False),
        "new": CodePath(name, params, batch, device, new=True),
    }
    times: dict[str, list[float]] = {"old": [], "new": []}
    for p in paths.values():  # warm-up: allocator, cuDNN algorithm choice
        p.step()
    sync(device)
    for _ in range(steps):
        for key, p in paths.items():
            t0 = time.perf_counter()
            p.step()
            sync(device)
            times[key].append(time.perf_counter() - t0)
    return {k: batch / float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=list(PAPER), choices=list(PAPER))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per path (median taken)")
    ap.add_argument("--size", type=int, default=None, help="input size instead of the paper's")
    ap.add_argument("--batch", type=int, default=None, help="batch instead of the paper's")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, device {a.device}, {torch.get_num_threads()} threads")
    print(
        f"{'model':8} {'size':>5} {'batch':>5} {'old img/s':>10} {'new img/s':>10} {'new/old':>8}"
    )
    for name in a.models:
        params, batch = PAPER[name]
        params = {**params, **({"input_size": a.size} if a.size else {})}
        batch = a.batch or batch
        r = measure(name, params, batch, a.device, a.steps)
        size = params.get("input_size", family(name).params()["input_size"])
        print(
            f"{name:8} {size:>5} {batch:>5} {r['old']:>10.2f} {r['new']:>10.2f} "
            f"{r['new'] / r['old']:>7.2f}x"
        )


if __name__ == "__main__":
    main()
