"""The GPU path: engine latency and throughput of hybrid and vivano, and capture -> verdict
through the whole daemon, measured in one run.

    .venv/bin/python bench/gpu.py [--device cuda|cpu] [--size full|tiny] [--quick] [--parts N]
                                  [--no-daemon] [--no-mqtt]

Engine: for each family (the registry's `family(name).params/create/graph`, untrained weights:
speed does not depend on them), batch 1 and 8, fp32 and fp16 (fp16 only on cuda), eager and
with CUDA graphs (cuda only), the torch backend's `infer` on preprocessed uint8 batches back to
back: p50/p99 per batch and images/s. TensorRT as well where its builder is importable.

Daemon: as bench/latency.py does it (the real station wiring, a folder camera over rendered
buttons, verdicts.jsonl, NG overlays, MQTT QoS 1 to a private mosquitto), with engine.backend
torch at batch 1: capture -> decided p50/p99 (the pipeline's latency_ms) and capture -> verdict
received by a subscriber of the broker (bench/daemon.py), the figure the 3 ms target is about.
Each family is sealed into a throw-away bundle first (model.pt, model.onnx, thresholds from a
few rendered good parts), which is what the daemon loads.

--device cpu --quick is a smoke check for machines without a GPU: tiny models, few runs.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from daemon import LATENCY_RATE_HZ, run_daemon

from inspectd import __version__
from inspectd.bundle import BUNDLE_SCHEMA, THRESHOLDS, Thresholds, load_bundle
from inspectd.bundle_seal import seal, write_thresholds
from inspectd.demo import write_parts
from inspectd.deploy.export import OPSET, export_onnx
from inspectd.engine.torch import TorchEngine
from inspectd.logs import configure_logging
from inspectd.mqtt.broker import LocalBroker, find_mosquitto
from inspectd.preprocess import PreprocessSpec, preprocess
from inspectd.synthetic import render_part
from inspectd.train.families import family

# Small configurations of each family for CPU smoke runs; full = the registry's defaults
# (hybrid 224 px with VGG19 blocks 1-3 and a 4-layer ViT, vivano 256 px).
TINY = {
    "hybrid": {
        "input_size": 64,
        "dim": 64,
        "depth": 1,
        "heads": 2,
        "skip1": [16, 1, 8],
        "skip2": [32, 2, 4],
    },
    "vivano": {
        "input_size": 64,
        "patch": 16,
        "dim": 64,
        "depth": 1,
        "heads": 2,
        "latent": 16,
        "components": 2,
    },
}


def models(size: str) -> dict[str, tuple[dict[str, Any], torch.nn.Module]]:
    out = {}
    for name in ("hybrid", "vivano"):
        fam = family(name)
        params = fam.params(TINY[name] if size == "tiny" else {})
        torch.manual_seed(0)
        out[name] = (params, fam.graph(fam.create(params)).eval())
    return out


def inputs(n: int, hw: int) -> np.ndarray:
    spec = PreprocessSpec(size=(hw, hw))
    return np.stack([preprocess(render_part(3, i % 16)[0], spec)[0] for i in range(n)])


def time_engine(engine: Any, batch: np.ndarray, runs: int) -> tuple[float, float, float]:
    """p50 ms, p99 ms per batch and images/s over `runs` batches after a warm-up."""
    for _ in range(3):
        engine.infer(batch)
    ms = []
    t0 = time.perf_counter()
    for _ in range(runs):
        t = time.perf_counter()
        engine.infer(batch)  # returns numpy: includes the copy back and synchronisation
        ms.append((time.perf_counter() - t) * 1000.0)
    total = time.perf_counter() - t0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), runs * len(batch) / total


def seal_bench_bundle(
    products: Path, name: str, params: dict[str, Any], graph: torch.nn.Module
) -> Path:
    """A bundle of an untrained model: what the daemon loads. Thresholds: just above the highest
    score of a few rendered good parts, so most parts are OK as on a real line."""
    from inspectd.engine.onnxruntime import OnnxRuntimeEngine

    out = products / name
    out.mkdir(parents=True)
    hw = int(params["input_size"])
    torch.save(graph.model.state_dict(), out / "model.pt")
    export_onnx(graph, out / "model.onnx", (hw, hw))
    good = OnnxRuntimeEngine(out / "model.onnx").infer(inputs(4, hw))
    from inspectd.bundle import sha256_of

    now = datetime.now(UTC).isoformat(timespec="seconds")
    write_thresholds(
        out,
        Thresholds.model_validate(
            {
                "schema": "inspectd.thresholds/1",
                "image": float(good.score.max()) * 1.05,
                "pixel": float(np.quantile(good.anomaly_map, 0.999)),
                "model_sha256": sha256_of(out / "model.onnx"),
                "method": "bench: 1.05 x max of 4 rendered good parts",
                "n_good": 4,
                "created": now,
                "tool_version": __version__,
            }
        ),
    )
    fam = family(name)
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "name": name,
        "created": now,
        "tool_version": __version__,
        "model": {
            "family": name,
            "file": "model.onnx",
            "opset": OPSET,
            "params": params,
            "checkpoint": "model.pt",
        },
        "preprocess": {"size": [hw, hw]},
        "scoring": fam.scoring,
    }
    seal(out, manifest, ["model.onnx", "model.pt", THRESHOLDS])
    load_bundle(out)
    return out


def trt_rows(products: Path, name: str, batches: list[int], runs: int) -> list[str]:
    """TensorRT engines (fp16, fp32) of the sealed bench bundle, where the builder is here."""
    from inspectd.engine.tensorrt import TensorRTEngine
    from inspectd.engine.trt_build import BuildError, build_engine, builder_available

    if not builder_available():
        return []
    rows = []
    hw = load_bundle(products / name).manifest.preprocess.size[0]
    for precision in ("fp32", "fp16"):
        try:
            path = build_engine(
                products / name,
                precision=precision,
                batch=max(batches),
                out=products / f"{name}-{precision}.engine",
                seal_into_bundle=False,
                progress=None,
            )
        except BuildError as exc:
            rows.append(f"| {name} | tensorrt | {precision} | - | - | not built: {exc} | | |")
            continue
        for b in batches:
            engine = TensorRTEngine(path, max_batch=b, cuda_graphs=True)
            p50, p99, ips = time_engine(engine, inputs(b, hw), runs)
            engine.close()
            rows.append(
                f"| {name} | tensorrt | {precision} | {b} | yes | {p50:.2f} | {p99:.2f} | "
                f"{ips:.0f} |"
            )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument(
        "--size", choices=["full", "tiny"], default=None, help="default: full on cuda, tiny on cpu"
    )
    p.add_argument("--quick", action="store_true", help="few runs and parts (smoke check)")
    p.add_argument("--runs", type=int, default=None, help="timed batches per configuration")
    p.add_argument("--parts", type=int, default=None, help="parts through the daemon per family")
    p.add_argument(
        "--camera-hz",
        type=float,
        default=LATENCY_RATE_HZ,
        help="daemon: folder camera rate (at most half the bare engine's batch-1 rate)",
    )
    p.add_argument("--no-daemon", action="store_true")
    p.add_argument("--no-mqtt", action="store_true")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench/gpu.py: torch sees no CUDA GPU; use --device cpu (smoke check)", file=sys.stderr
        )
        return 2
    configure_logging("warning", "console")
    size = args.size or ("full" if args.device == "cuda" else "tiny")
    runs = args.runs or (10 if args.quick else 200)
    parts = args.parts or (20 if args.quick else 500)
    on_gpu = args.device == "cuda"
    gpu = torch.cuda.get_device_name(0) if on_gpu else platform.processor() or platform.machine()
    print(
        f"# bench/gpu.py {datetime.now(UTC).isoformat(timespec='seconds')}: {args.device} ({gpu}), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, {size} models, {runs} runs"
    )
    print(
        "\n| model | params | input | backend | precision | batch | CUDA graph | p50 ms | p99 ms "
        "| images/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    built = models(size)
    bare: dict[tuple[str, str], float] = {}  # batch 1 images/s, as the daemon runs it
    for name, (params, graph) in built.items():
        hw = int(params["input_size"])
        n_params = sum(p.numel() for p in graph.parameters()) / 1e6
        for precision in ("fp32", "fp16") if on_gpu else ("fp32",):
            for b in (1, 8):
                batch = inputs(b, hw)
                for graphs in (False, True) if on_gpu else (False,):
                    engine = TorchEngine(
                        copy.deepcopy(graph),
                        (hw, hw),
                        device=args.device,
                        precision=precision,
                        cuda_graphs=graphs,
                        max_batch=b,
                    )
                    p50, p99, ips = time_engine(engine, batch, runs)
                    engine.close()
                    if b == 1 and graphs == on_gpu:
                        bare[(name, precision)] = ips
                    print(
                        f"| {name} | {n_params:.1f} M | {hw} | torch | {precision} | {b} | "
                        f"{'yes' if graphs else 'no'} | {p50:.2f} | {p99:.2f} | {ips:.1f} |",
                        flush=True,
                    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        products = work / "products"
        for name, (params, graph) in built.items():
            seal_bench_bundle(products, name, params, graph)
        if on_gpu:
            for name in built:
                for row in trt_rows(products, name, [1, 8], runs):
                    print(row, flush=True)
        if args.no_daemon:
            return 0
        write_parts(work / "frames", parts)
        for f in (work / "frames").glob("*corrupt*"):
            f.unlink()  # timing is about inspected parts; the ERROR path is tested elsewhere
        n = len(list((work / "frames").iterdir()))
        use_mqtt = not args.no_mqtt and find_mosquitto() is not None
        print(
            f"\ndaemon: {n} parts per model, folder camera at {args.camera_hz:g} Hz "
            f"(at most half the bare engine's batch-1 rate), max_batch 1, "
            f"MQTT {'to a private mosquitto (QoS 1)' if use_mqtt else 'off'}\n"
        )
        print(
            "| model | backend | precision | camera Hz | capture->decided p50 ms | p99 ms | "
            "capture->MQTT p50 ms | p99 ms | parts/s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name in built:
            for precision in ("fp16",) if on_gpu else ("fp32",):
                rate = min(bare[(name, precision)] / 2, args.camera_hz)
                broker = LocalBroker.start_mosquitto() if use_mqtt else None
                engine = {
                    "backend": "torch",
                    "device": args.device,
                    "precision": precision,
                    "max_batch": 1,
                }
                try:
                    stats, received = run_daemon(
                        products,
                        name,
                        work / "frames",
                        work / name,
                        broker,
                        n,
                        engine,
                        rate_hz=rate,
                    )
                finally:
                    if broker:
                        broker.close()
                p50, p99 = stats.percentiles(stats.latency_ms)
                q50, q99 = stats.percentiles(received)
                done = sum(stats.verdicts.values())
                print(
                    f"| {name} | torch | {precision} | {rate:.0f} | {p50:.2f} | {p99:.2f} | "
                    f"{q50:.2f} | {q99:.2f} | "
                    f"{done / stats.seconds:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
