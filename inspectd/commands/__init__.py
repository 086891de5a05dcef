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


def add_bundle_args(parser: argparse.ArgumentParser, *, from_config: bool = False) -> None:
    """--product and --products, for the commands that work on one bundle; ``from_config``:
    --products defaults to the station config's products_dir (None here, resolved later)."""
    parser.add_argument("--product", required=True)
    if from_config:
        parser.add_argument(
            "--products",
            type=Path,
            default=None,
            help="products folder (default: the station config's, else ./products)",
        )
    else:
        parser.add_argument(
            "--products", type=Path, default=Path("products"), help="folder holding the bundles"
        )


def add_version_args(parser: argparse.ArgumentParser, *, keep: bool = True) -> None:
    """--by (and --keep), for the commands that write or activate a product's versions."""
    import getpass

    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        who = "unknown"
    parser.add_argument(
        "--by", default=who, help=f"who does it, for the versions' record (default: {who})"
    )
    if keep:
        parser.add_argument(
            "--keep",
            type=_keep,
            default=None,
            help="versions of the product kept on disk, >= 2 (default: the station config's "
            "versions.keep, else 10); the active one and its parent are always kept",
        )


def _keep(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 2")
    return int(text)
