"""`inspectd build-engine`: a bundle's ONNX graph compiled to a TensorRT engine for this GPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers, add_bundle_args
from inspectd.commands.verify_engine import verify

VERIFY_PARTS = 40  # rendered parts the new engine is compared on


def add_parser(sub: Subparsers) -> None:
    be = sub.add_parser(
        "build-engine",
        help="compile a bundle's ONNX graph to a TensorRT engine for this GPU",
        description="Build model.<gpu>-sm<cc>-trt<version>.engine beside model.onnx with "
        "TensorRT's builder (timing cache in --state-dir), record it in the manifest, then compare "
        "it with ONNX Runtime on rendered parts (as verify-engine). Exit status 2 when TensorRT "
        "or a "
        "GPU is not available, 1 when the engine judges any part differently.",
    )
    add_bundle_args(be)
    be.add_argument("--precision", choices=["fp16", "int8", "fp32"], default="fp16")
    be.add_argument("--batch", type=int, default=1, help="largest batch (engine.max_batch)")
    be.add_argument("--calib-images", type=Path, default=None, help="int8: folder of good parts")
    be.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="timing and calibration caches (default: <products>/.trt-cache)",
    )
    be.add_argument(
        "--no-verify", action="store_true", help="skip the comparison with ONNX Runtime"
    )
    be.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """ONNX -> TensorRT engine for this GPU, sealed into the bundle, then checked against ONNX
    Runtime on rendered parts (verdicts must all agree)."""
    from inspectd.bundle import BundleError
    from inspectd.engine import EngineError, EngineUnavailable
    from inspectd.logs import configure_logging

    configure_logging("warning", "console")
    try:
        from inspectd.engine.trt_build import BuildError, build_engine, builder_available

        if not builder_available():
            raise EngineUnavailable(
                "TensorRT with its builder is not installed for this Python (on a Jetson: "
                "JetPack's python3-libnvinfer in a venv made with --system-site-packages; on a GPU "
                "box the tensorrt wheel from NVIDIA's index); this machine can run onnxruntime or "
                "torch"
            )
        path = build_engine(
            args.products / args.product,
            precision=args.precision,
            batch=args.batch,
            calib_images=args.calib_images,
            state_dir=args.state_dir,
            say=print,
        )
    except (BuildError, BundleError, EngineError) as exc:
        print(f"inspectd build-engine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {path} and re-sealed {args.products / args.product / 'manifest.yaml'}")
    if args.no_verify:
        return 0
    # the new engine against ONNX Runtime on rendered parts, as verify-engine does
    return verify(
        args.products,
        args.product,
        images=None,
        count=VERIFY_PARTS,
        backend="tensorrt",
        device="cuda",
        batch=args.batch,
        precision=args.precision,
        state_dir=args.state_dir,
    )
