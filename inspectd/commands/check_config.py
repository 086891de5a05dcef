"""`inspectd check-config`: validate a station config and print it resolved."""

from __future__ import annotations

import argparse
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers, load_config


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("check-config", help="validate a station config and print it resolved")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inspectd.config import format_resolved

    config = load_config(args.file)
    if config is None:
        return EXIT_CONFIG
    print(format_resolved(config), end="")
    return 0
