"""`inspectd versions`: the versions of a product's bundle, the active one marked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers, add_bundle_args, load_config


def add_products_args(parser: argparse.ArgumentParser) -> None:
    """--product, --products and --config (whose products_dir is the default)."""
    add_bundle_args(parser, from_config=True)
    parser.add_argument("--config", type=Path, default=None, help="the station's YAML")


def add_parser(sub: Subparsers) -> None:
    ver = sub.add_parser(
        "versions",
        help="list the versions of a product's bundle",
        description="List every version of a product's bundle kept on disk: id, when, the "
        "version it was made from, what made it (build, calibrate, teach, refit) and who, the "
        "model's sha256 and the calibration's figures. * marks the active version, the one "
        "stations load.",
    )
    add_products_args(ver)
    ver.add_argument("--json", action="store_true", help="print the versions as JSON")
    ver.set_defaults(func=run)


def product_folder(args: argparse.Namespace) -> Path | None:
    """products/<name> from --products or the station config's products_dir; None after
    printing the config's errors."""
    products = args.products
    if args.config is not None:
        config = load_config(args.config)
        if config is None:
            return None
        products = products or config.products_dir
    return (products or Path("products")) / args.product


def product_bundle(args: argparse.Namespace, command: str) -> Path | None:
    """``product_folder``, and None after saying so when it holds no product bundle."""
    from inspectd.versions.layout import is_product, version_ids

    product = product_folder(args)
    # a taught product has versions before one is accepted, and no bundle at its top yet
    if product is not None and not is_product(product) and not version_ids(product):
        print(f"inspectd {command}: {product}: not a product bundle", file=sys.stderr)
        return None
    return product


def run(args: argparse.Namespace) -> int:
    import json

    from inspectd.versions.layout import VersionError
    from inspectd.versions.listing import HEADER, describe, history

    product = product_bundle(args, "versions")
    if product is None:
        return EXIT_CONFIG
    try:
        rows = history(product)
    except VersionError as exc:
        print(f"inspectd versions: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=1))
        return 0
    print(f"{product}: {len(rows)} version{'s' if len(rows) != 1 else ''} (* active)")
    print(HEADER)
    for row in rows:
        print(describe(row))
    return 0
