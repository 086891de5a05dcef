"""`inspectd verify-engine`: a backend against ONNX Runtime on sample parts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers, add_bundle_args


def add_parser(sub: Subparsers) -> None:
    ve = sub.add_parser(
        "verify-engine",
        help="compare a backend with ONNX Runtime: map difference and verdict agreement",
        description="Run sample parts (--images, else rendered buttons with every defect) through "
        "the chosen backend and ONNX Runtime, print the largest anomaly-map and score difference "
        "and whether every verdict agrees against the bundle's image threshold. Exit status 1 when "
        "any verdict differs, 2 when the backend or a GPU is not available.",
    )
    add_bundle_args(ve)
    ve.add_argument(
        "--images", type=Path, default=None, help="folder of part images (searched recursively)"
    )
    ve.add_argument(
        "--count", type=int, default=40, help="rendered parts when --images is not given"
    )
    ve.add_argument("--backend", choices=["tensorrt", "torch"], default="tensorrt")
    ve.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="torch only; tensorrt is cuda"
    )
    ve.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="torch on cuda")
    ve.add_argument("--batch", type=int, default=8)
    ve.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where a tensorrt engine rebuilt for this GPU is kept",
    )
    ve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return verify(
        args.products,
        args.product,
        images=args.images,
        count=args.count,
        backend=args.backend,
        device=args.device,
        batch=args.batch,
        precision=args.precision,
        state_dir=args.state_dir,
    )


def verify(
    products: Path,
    product: str,
    *,
    images: Path | None,
    count: int,
    backend: str,
    device: str,
    batch: int,
    precision: str,
    state_dir: Path | None,
) -> int:
    """A backend vs ONNX Runtime on sample parts; exit 1 when any verdict differs."""
    from inspectd.bundle import BundleError, load_bundle
    from inspectd.deploy.parity import compare, format_comparison, run_all, sample_images
    from inspectd.engine import EngineError, load_engine
    from inspectd.logs import configure_logging

    configure_logging("warning", "console")
    try:
        bundle = load_bundle(products / product)
        names, sample = sample_images(bundle, images, n=count)
        candidate = load_engine(
            bundle.model_path,
            backend=backend,
            device=device,
            bundle=bundle,
            max_batch=batch,
            precision=precision,
            state_dir=state_dir,
        )
        reference = load_engine(bundle.model_path, backend="onnxruntime")
    except (BundleError, EngineError, FileNotFoundError) as exc:
        print(f"inspectd verify-engine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    result = compare(
        run_all(reference, sample), run_all(candidate, sample), names, bundle.thresholds.image
    )
    text = format_comparison(result, backend)
    print(text, file=sys.stdout if result.agree else sys.stderr)
    return 0 if result.agree else 1
