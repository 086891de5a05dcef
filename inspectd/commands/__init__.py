"""One module per `inspectd` command, each with `add_parser(subparsers)` and `run(args) -> int`;
inspectd.cli assembles them. Heavy imports happen inside `run`, so building the parser imports
nothing but the standard library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inspectd.config import StationConfig

EXIT_CONFIG = 2  # config and bundle errors: systemd must not restart-loop on them

Subparsers = argparse._SubParsersAction  # what `add_subparsers()` returns


def load_config(path: Path) -> StationConfig | None:
    """The station config, or None after printing every error to stderr."""
    from inspectd.config import ConfigError, load_station_config

    try:
        return load_station_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def add_bundle_args(parser: argparse.ArgumentParser) -> None:
    """--product and --products, for the commands that work on one bundle."""
    parser.add_argument("--product", required=True)
    parser.add_argument(
        "--products", type=Path, default=Path("products"), help="folder holding the bundles"
    )
