"""`inspectd eval`: a bundle measured on an MVTec-layout test set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers, add_bundle_args


def add_parser(sub: Subparsers) -> None:
    ev = sub.add_parser(
        "eval",
        help="measure a bundle on an MVTec-layout test set (AUROC, AUPRO, F1-max)",
        description="Score <data>/test with the bundle's ONNX graph and print image AUROC, pixel "
        "AUROC, AUPRO (to 30% FPR, normalised), image F1-max and the threshold's recall and "
        "false rejects, per defect type (each against all good test images) and overall. "
        "Exit status 2 when the bundle or the data set cannot be used.",
    )
    add_bundle_args(ev)
    ev.add_argument(
        "--data", type=Path, required=True, help="MVTec-layout data set (its test/ split)"
    )
    ev.add_argument("--json", type=Path, default=None, help="write the metrics as JSON here")
    ev.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score a data set's test split with a bundle through ONNX Runtime (no torch) and report."""
    import json

    from inspectd.bundle import BundleError, load_bundle
    from inspectd.engine import EngineError, load_engine
    from inspectd.logs import configure_logging
    from inspectd.preprocess import PreprocessError
    from inspectd.train.datasets.mvtec import MVTecSet
    from inspectd.train.evaluate import evaluate, to_markdown

    configure_logging("warning", "console")
    try:
        bundle = load_bundle(args.products / args.product)
        dataset = MVTecSet(args.data)
        if not dataset.test():
            raise ValueError(f"{args.data}: no test images (test/good/*, test/<defect>/*)")
        engine = load_engine(bundle.model_path)
        result = evaluate(
            engine,
            dataset,
            bundle.manifest.preprocess,
            bundle.thresholds.image,
            batch=args.batch_size,
            progress=True,
        )
    except (BundleError, EngineError, FileNotFoundError, PreprocessError, ValueError) as exc:
        print(f"inspectd eval: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    table = to_markdown(
        result, title=f"{bundle.name} ({bundle.manifest.model.family}) on {args.data}"
    )
    print(table, end="")
    if args.json is not None:
        report = {
            "product": bundle.name,
            "model_sha256": bundle.model_sha256,
            "data": str(args.data),
            **result,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.md is not None:
        args.md.write_text(table)
    return 0
