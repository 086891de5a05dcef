"""Time to teach a product from 100 good parts at 224 px, fitting and calibration included
(issue 34 asks <= 60 s on the development CPU), measured in one run.

    .venv/bin/python bench/teach.py [--parts 100] [--fit-share 0.5] [--threads 2]

Renders ``--parts`` synthetic good buttons, then runs ``inspectd.train.teach.teach`` on a new
product in a temporary folder: both memory fits (the calibrated half, then every part),
their ONNX exports and parity checks, the calibration through ONNX Runtime, the report and the
version write. Prints the whole time and the memory fits' share of it (from the log).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", type=int, default=100)
    ap.add_argument("--fit-share", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from inspectd.logs import configure_logging
    from inspectd.synthetic import render_part
    from inspectd.synthetic.dataset import write_png
    from inspectd.train.teach import TeachRequest, teach

    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "good"
        good.mkdir()
        for i in range(args.parts):
            write_png(good / f"{i:04d}.png", render_part(5, i, None, split="train")[0])
        paths = sorted(good.glob("*.png"))
        req = TeachRequest(
            Path(tmp) / "products" / "bench", paths, fit_share=args.fit_share, progress=False
        )
        t0 = time.monotonic()
        taught = teach(req)
        seconds = time.monotonic() - t0
    f = taught.figures
    print(
        f"machine: {platform.machine()} {platform.processor() or platform.system()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {args.threads} threads"
    )
    print(
        f"teach of {args.parts} parts at 224 px ({f['n_fit']} fitted, {f['n_good']} calibrated, "
        f"then a memory of all {args.parts}): {seconds:.1f} s (target <= 60 s); image "
        f"threshold {f['image_threshold']:.4g}, FRR <= {f['frr_bound']:.3g}"
    )


if __name__ == "__main__":
    main()
