"""`inspectd cameras`: the GenICam cameras a GenTL producer sees."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers


def add_parser(sub: Subparsers) -> None:
    cams = sub.add_parser(
        "cameras",
        help="list the GenICam cameras a GenTL producer sees",
        description="List vendor, model, serial, user id and current pixel format of every "
        "camera the GenTL producer (--cti, else the .cti files in GENICAM_GENTL64_PATH) sees. "
        "Exit status 2 when no producer is found.",
    )
    cams.add_argument(
        "--cti",
        type=Path,
        default=None,
        help="GenTL producer file (default: the .cti files in GENICAM_GENTL64_PATH)",
    )
    cams.add_argument(
        "--no-open", action="store_true", help="do not open the cameras to read their pixel format"
    )
    cams.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inspectd.capture.base import CaptureError
    from inspectd.capture.genicam import list_cameras
    from inspectd.logs import configure_logging

    configure_logging("error", "console")
    try:
        cameras = list_cameras(args.cti, pixel_format=not args.no_open)
    except CaptureError as exc:
        print(f"inspectd cameras: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not cameras:
        print("inspectd cameras: the GenTL producer sees no camera", file=sys.stderr)
        return 1
    head = ("#", "VENDOR", "MODEL", "SERIAL", "USER ID", "PIXEL FORMAT")
    rows = [head] + [
        (str(d.index), d.vendor, d.model, d.serial, d.user_id, fmt or "-") for d, fmt in cameras
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
