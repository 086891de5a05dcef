"""`inspectd demo`: freshly rendered buttons through the bundled product."""

from __future__ import annotations

import argparse
from pathlib import Path

from inspectd.commands import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="inspect freshly made buttons with the bundled product")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    p.add_argument("--limit", type=int, default=60, help="number of parts")
    p.add_argument("--mqtt-host", default="localhost")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--products", type=Path, default=None, help="products folder (default: the repo's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inspectd.demo import REPO_PRODUCTS, run_demo
    from inspectd.logs import configure_logging

    configure_logging("error", "console")  # the part lines already show every ERROR's reason
    return run_demo(args.out, args.limit, args.mqtt_host, args.mqtt_port, args.products or REPO_PRODUCTS)
