"""torch vs ONNX Runtime on the same exported graph, per model, measured in one run.

    .venv/bin/python bench/engines.py [--models ae hybrid vivano] [--batch 1 8] [--runs 20]
    .venv/bin/python bench/engines.py --device cuda   # torch fp32 and fp16 on a GPU
    .venv/bin/python bench/engines.py --models patchcore --threads 1 --param memory_size=8192

For each model family at its paper input size (or --size), the inspection graph (normalise ->
model -> scoring head) is built once with random weights (speed does not depend on them;
patchcore gets a random memory of its memory_size), exported once, and run back to back:
torch eager (inference_mode) and ONNX Runtime with the daemon's session settings, alternating
in rounds so a change in machine load hits both. Prints
latency p50/p99 per batch, throughput, and the ratio ONNX Runtime / torch (target on the CPU:
>= 1.5x). Both use the same thread count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from inspectd.deploy.export import export_onnx
from inspectd.engine.onnxruntime import OnnxRuntimeEngine
from inspectd.models.patchcore import PatchCore
from inspectd.train.coreset import nearest_neighbours
from inspectd.train.families import family


def timings(fn, batch: np.ndarray, runs: int) -> list[float]:
    fn(batch)  # warm-up: lazy initialisation and allocator growth are not the steady state
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(batch)
        out.append(time.perf_counter() - t0)
    return out


def summary(name: str, times: list[float], n: int) -> tuple[float, str]:
    ms = np.array(times) * 1e3
    ips = n / np.median(times)
    return (
        ips,
        f"{name:<22} p50 {np.percentile(ms, 50):8.1f} ms  p99 {np.percentile(ms, 99):8.1f} ms  "
        f"{ips:7.1f} img/s",
    )


def bench_model(
    name: str,
    overrides: dict,
    batches: list[int],
    runs: int,
    device: str,
    threads: int,
) -> None:
    fam = family(name)
    params = fam.params(overrides)
    model = fam.create(params)
    if isinstance(model, PatchCore):  # a fitted model's shapes: memory_size patches
        memory = torch.randn(model.memory_size, model.dim)
        model.set_memory(
            memory, torch.zeros(model.dim), nearest_neighbours(memory, model.neighbours)
        )
    graph = fam.graph(model).eval()
    hw = (params["input_size"],) * 2
    print(
        f"\n{name}: input {hw[0]}x{hw[1]}, {sum(p.numel() for p in graph.parameters()) / 1e6:.1f} "
        f"M parameters"
    )
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(graph, Path(tmp) / "model.onnx", hw)
        print(f"  ONNX {path.stat().st_size / 1e6:.1f} MB")
        ort = OnnxRuntimeEngine(path, threads=threads) if device == "cpu" else None
        for b in batches:
            x = rng.integers(0, 256, (b, *hw, 3), dtype=np.uint8)
            variants = {}
            for dtype in [torch.float32] if device == "cpu" else [torch.float32, torch.float16]:
                g = graph.to(device)

                def run_torch(a, g=g, dtype=dtype):  # noqa: ANN001 - bench helper
                    with (
                        torch.inference_mode(),
                        torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32),
                    ):
                        r = g(torch.from_numpy(a).to(device))
                        if device == "cuda":
                            torch.cuda.synchronize()
                        return r

                variants[f"torch {str(dtype)[6:]}"] = run_torch
            if ort is not None:
                variants["onnxruntime"] = ort.infer
            results: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(max(1, runs // 5)):  # rounds, alternating
                for k, fn in variants.items():
                    results[k] += timings(fn, x, 5)
            print(f"  batch {b}")
            ips = {}
            for k, ts in results.items():
                ips[k], line = summary(k, ts, b)
                print("    " + line)
            if "onnxruntime" in ips:
                print(
                    "    ratio onnxruntime / torch: "
                    f"{ips['onnxruntime'] / ips['torch float32']:.2f}x"
                )
            if "torch float16" in ips:
                print(f"    ratio fp16 / fp32: {ips['torch float16'] / ips['torch float32']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["ae", "hybrid", "vivano"])
    p.add_argument(
        "--size", type=int, default=None, help="input size for every model (default: its own)"
    )
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="model setting"
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0, help="0: all cores (both runtimes)")
    a = p.parse_args()
    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, device {a.device}, {threads} threads")
    params = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in a.param)}
    if a.size:
        params["input_size"] = a.size
    for name in a.models:
        bench_model(name, params, a.batch, a.runs, a.device, threads)


if __name__ == "__main__":
    main()
