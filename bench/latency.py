"""Per-stage latency and daemon throughput vs the bare engine, measured in one run.

    .venv/bin/python bench/latency.py [--parts 600] [--product button] [--threads N]
        [--max-batch N] [--no-mqtt]

The bare engine runs the bundle's model on preloaded, preprocessed inputs back to back, with the
same engine settings as the daemon; it runs before and after the daemon and the ratio uses the
mean of the two, so a shift in machine load during the run shows instead of skewing it. The
daemon runs the real station wiring on the same parts from a folder camera:
read + decode, preprocess, infer, decide, and publish (verdicts.jsonl, NG overlays, MQTT QoS 1
to a private mosquitto). The ratio daemon / bare says what the daemon's own work costs. The
"capture" stage is reading and decoding the file (the folder camera's capture).

Two daemon passes: the camera free-running (throughput; latency there is queueing), then paced
at 30 Hz (at most half the bare engine's rate) for latency: capture -> decided (the pipeline's
latency_ms) and capture -> verdict received by a subscriber of the broker (bench/daemon.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from daemon import LATENCY_RATE_HZ, run_daemon

from inspectd.bundle import load_bundle
from inspectd.demo import REPO_PRODUCTS, write_parts
from inspectd.engine import load_engine
from inspectd.inspection import STAGES
from inspectd.logs import configure_logging
from inspectd.mqtt.broker import LocalBroker
from inspectd.preprocess import load_inputs


def bare_engine(
    products: Path, product: str, frames: list[Path], threads: int, batch: int
) -> float:
    bundle = load_bundle(products / product)
    engine = load_engine(bundle.model_path, threads=threads)
    engine.warmup()
    inputs = load_inputs(frames, bundle.manifest.preprocess)
    t0 = time.perf_counter()
    for i in range(0, len(inputs), batch):
        engine.infer(inputs[i : i + batch])
    return len(inputs) / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", type=int, default=600)
    p.add_argument("--products", type=Path, default=REPO_PRODUCTS)
    p.add_argument("--product", default="button", help="e.g. button-patchcore")
    p.add_argument("--no-mqtt", action="store_true")
    p.add_argument(
        "--threads", type=int, default=0, help="engine.threads for both (0: all cores but one)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=1,
        help="engine.max_batch of the daemon, and the bare engine's batch",
    )
    args = p.parse_args()
    configure_logging("warning", "console")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_parts(work / "frames", args.parts)
        frames = sorted(p for p in (work / "frames").iterdir() if "corrupt" not in p.name)
        for f in set((work / "frames").iterdir()) - set(frames):
            f.unlink()  # timing is about inspected parts; the ERROR path is tested elsewhere
        bare_before = bare_engine(args.products, args.product, frames, args.threads, args.max_batch)
        broker = None if args.no_mqtt else LocalBroker.start_mosquitto()
        engine = {"threads": args.threads, "max_batch": args.max_batch}
        rate = min(bare_before / 2, LATENCY_RATE_HZ)
        try:
            stats, _ = run_daemon(
                args.products,
                args.product,
                work / "frames",
                work / "free",
                broker,
                len(frames),
                engine,
            )
            paced, received = run_daemon(
                args.products,
                args.product,
                work / "frames",
                work / "paced",
                broker,
                len(frames),
                engine,
                rate_hz=rate,
            )
        finally:
            if broker:
                broker.close()
        bare_after = bare_engine(args.products, args.product, frames, args.threads, args.max_batch)
    n = sum(stats.verdicts.values())
    through = n / stats.seconds
    print(
        f"product: {args.product}  parts: {n}  verdicts: {dict(stats.verdicts)}  "
        f"mqtt: {'off' if args.no_mqtt else 'mosquitto'}"
    )
    print(f"{'stage':<12}{'p50 ms':>10}{'p99 ms':>10}")
    for stage in STAGES:
        p50, p99 = stats.percentiles(stats.stage_ms[stage])
        print(f"{stage:<12}{p50:>10.2f}{p99:>10.2f}")
    print(f"camera paced at {rate:.0f} Hz:")
    for what, values in (("capture->decided", paced.latency_ms), ("capture->MQTT", received)):
        p50, p99 = paced.percentiles(values)
        print(f"{what:<17}{p50:>5.2f}{p99:>10.2f}")
    bare = (bare_before + bare_after) / 2
    print(
        f"bare engine: {bare_before:.1f} / {bare_after:.1f} parts/s (before / after)   "
        f"daemon: {through:.1f} parts/s   ratio daemon/bare: {through / bare:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
