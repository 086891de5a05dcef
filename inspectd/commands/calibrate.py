"""`inspectd calibrate`: thresholds from known-good parts, with a stated false-reject rate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import (
    EXIT_CONFIG,
    Subparsers,
    add_bundle_args,
    add_version_args,
    load_config,
)


def add_parser(sub: Subparsers) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="set thresholds from known-good parts, with a stated false-reject rate",
        description="Score known-good parts (files or the station's camera), set the image "
        "threshold with a stated false-reject rate and confidence bound, the pixel threshold "
        "and the smallest region, and write them with calibration.png/.md as a new version of "
        "the product, made active (inspectd rollback goes back). A running daemon picks the "
        "thresholds up on SIGHUP or the reload command.",
    )
    add_bundle_args(cal, from_config=True)
    good = cal.add_mutually_exclusive_group(required=True)
    good.add_argument(
        "--images",
        type=Path,
        action="append",
        help="folder of known-good part images (searched recursively); again to add another, "
        "e.g. reviewed false rejects to the good parts",
    )
    good.add_argument("--config", type=Path, help="station YAML: grab good parts from its camera")
    cal.add_argument("--count", type=int, default=0, help="with --config: good parts to grab")
    cal.add_argument(
        "--defects",
        type=Path,
        default=None,
        help="defect images: <dir>/<defect type>/*, masks from an MVTec ground_truth/",
    )
    cal.add_argument("--target-frr", type=float, default=0.001, help="false-reject rate aimed at")
    cal.add_argument("--confidence", type=float, default=0.95, help="confidence of the bound")
    cal.add_argument(
        "--method",
        choices=["order", "tail"],
        default="order",
        help="order: distribution-free order statistic (default); tail: "
        "generalised Pareto fit, bootstrap upper bound",
    )
    cal.add_argument(
        "--force",
        action="store_true",
        help="too few parts for the target: use the highest good score and say the bound",
    )
    cal.add_argument(
        "--replace",
        action="store_true",
        help="calibrate from fewer good parts than the bundle's current calibration",
    )
    cal.add_argument(
        "--drop-training",
        action="store_true",
        help="leave out images the model was trained on instead of refusing",
    )
    cal.add_argument(
        "--pixel-quantile",
        type=float,
        default=0.999,
        help="pixel threshold: this quantile of good-part map pixels",
    )
    cal.add_argument(
        "--min-region-area",
        type=int,
        default=None,
        help="smallest defect region in map pixels (default: keep the bundle's); "
        "a product specification, reported beside the regions good parts show",
    )
    add_version_args(cal)
    cal.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inspectd.calibrate.calibration import CalibrationError, Request, calibrate, write
    from inspectd.calibrate.summary import summary
    from inspectd.capture.base import CaptureError
    from inspectd.logs import configure_logging
    from inspectd.versions.store import DEFAULT_KEEP

    configure_logging("warning", "console")
    products, camera, keep = args.products, None, DEFAULT_KEEP
    if args.config is not None:
        if args.count < 1:
            print(
                "inspectd calibrate: --config needs --count N (good parts to grab)", file=sys.stderr
            )
            return EXIT_CONFIG
        config = load_config(args.config)
        if config is None:
            return EXIT_CONFIG
        products, camera = products or config.products_dir, config.camera
        keep = config.versions.keep
    req = Request(
        bundle_dir=(products or Path("products")) / args.product,
        images=args.images,
        camera=camera,
        count=args.count,
        defects=args.defects,
        target_frr=args.target_frr,
        confidence=args.confidence,
        method=args.method,
        force=args.force,
        replace=args.replace,
        drop_training=args.drop_training,
        pixel_quantile=args.pixel_quantile,
        min_area=args.min_region_area,
        progress=sys.stderr.isatty(),
        by=args.by,
        keep=args.keep or keep,
    )
    try:
        result = calibrate(req)
        files = write(result, req)
    except CalibrationError as exc:
        print(f"inspectd calibrate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CaptureError as exc:
        print(f"inspectd calibrate: camera: {exc}", file=sys.stderr)
        return 1
    print(summary(result, req))
    print("wrote " + ", ".join(str(f) for f in files))
    if result.version is not None:
        print(
            f"version {result.version.version} of {result.bundle.name} (from version "
            f"{result.bundle.version}) is now active; inspectd rollback --product "
            f"{result.bundle.name} goes back"
        )
    print(
        "a running daemon takes them on SIGHUP (systemctl reload) or the reload_thresholds command"
    )
    return 0
