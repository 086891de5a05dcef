"""`inspectd export`: re-export a bundle's model.onnx from its model.pt."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers, add_bundle_args


def add_parser(sub: Subparsers) -> None:
    exp = sub.add_parser("export", help="re-export a bundle's model.onnx from its model.pt")
    add_bundle_args(exp)
    exp.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store weights as fp16 (half the file; maps change, so recalibrate)",
    )
    exp.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of frames for the parity check (default: synthetic inputs)",
    )
    exp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inspectd.bundle import BundleError
    from inspectd.deploy.export import ExportError, reexport
    from inspectd.logs import configure_logging

    configure_logging("info", "console")
    try:
        print(
            reexport(
                args.products / args.product, fp16_weights=args.fp16_weights, images=args.images
            )
        )
    except (BundleError, ExportError) as exc:
        print(f"inspectd export: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
