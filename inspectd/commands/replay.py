"""`inspectd replay`: archived parts re-inspected with the current bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers


def add_parser(sub: Subparsers) -> None:
    rep = sub.add_parser(
        "replay",
        help="re-inspect archived parts with the current bundle and show what changed",
        description="Run the frames of a station's archive (archive.dir) through the current "
        "bundle with the daemon's own preprocessing, engine and decision, and compare each "
        "part's verdict and score with the archived ones.",
    )
    rep.add_argument("--archive", type=Path, required=True, help="the archive folder")
    rep.add_argument(
        "--product",
        default=None,
        help="bundle to inspect with (default: the product each part was inspected with)",
    )
    rep.add_argument(
        "--products-dir",
        "--products",
        dest="products_dir",
        type=Path,
        default=Path("/etc/inspectd/products"),
        help="folder holding the bundles (default: /etc/inspectd/products)",
    )
    rep.add_argument("--json", action="store_true", help="print every part and the summary as JSON")
    rep.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from inspectd.logs import configure_logging
    from inspectd.replay import ReplayError, format_report, replay

    configure_logging("error", "console")  # ERROR parts are in the report, with their reasons
    try:
        report = replay(args.archive, args.products_dir, args.product)
    except ReplayError as exc:
        print(f"inspectd replay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_report(report), end="")
    return 0
