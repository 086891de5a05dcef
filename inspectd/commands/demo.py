"""`inspectd demo`: freshly rendered buttons through the bundled product."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be 0 or more")
    return value


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "demo",
        help="inspect freshly made buttons with the bundled product",
        description="Render fresh buttons (good, defective, one corrupt file), inspect them with "
        "the bundled product, publish the verdicts over MQTT (to --mqtt-host, or to an embedded "
        "broker when none answers) and serve the line page on 127.0.0.1 (port 8470 when free).",
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    p.add_argument("--limit", type=int, default=60, help="number of parts")
    p.add_argument("--mqtt-host", default="localhost")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument(
        "--products", type=Path, default=None, help="products folder (default: the repo's)"
    )
    p.add_argument(
        "--product",
        default="button",
        help="the bundle to inspect with: button (the hybrid, default) or button-patchcore "
        "(the training-free feature memory)",
    )
    p.add_argument(
        "--ui",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the line page (inspectd ui) for the demo station and print its "
        "address (default: on; needs the ui extra, the demo runs without it)",
    )
    p.add_argument(
        "--hold",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="keep the page up this long after the parts (default: until Ctrl-C when "
        "stdin is a terminal, else 0: the run ends with the parts)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inspectd.bundle import MANIFEST
    from inspectd.demo import REPO_PRODUCTS, run_demo
    from inspectd.logs import configure_logging

    products = args.products or REPO_PRODUCTS
    if not (products / args.product / MANIFEST).is_file():
        there = sorted(p.parent.name for p in products.glob(f"*/{MANIFEST}"))
        print(
            f"inspectd demo: no product bundle {args.product!r} in {products} "
            f"(there: {', '.join(there) or 'none'})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    configure_logging("error", "console")  # the part lines already show every ERROR's reason
    return run_demo(
        args.out,
        args.limit,
        args.mqtt_host,
        args.mqtt_port,
        products,
        ui=args.ui,
        hold=args.hold,
        product=args.product,
    )
