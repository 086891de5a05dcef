"""`inspectd rollback`: make an earlier version of a product's bundle the active one, and have
a running station take it (its ``product`` command, the product switch between two parts)."""

from __future__ import annotations

import argparse
import sys

from inspectd.commands import EXIT_CONFIG, Subparsers, add_version_args
from inspectd.commands.station_link import tell_station
from inspectd.commands.versions import add_products_args, product_bundle


def add_parser(sub: Subparsers) -> None:
    rb = sub.add_parser(
        "rollback",
        help="make an earlier version of a product active again",
        description="Make the version the active one was made from (or --to ID) active. With "
        "--config the station of that config is told over MQTT: when it runs the product it "
        "switches to that version between two parts (the product command), otherwise it loads "
        "it at its next switch to the product or its next start.",
    )
    add_products_args(rb)
    rb.add_argument("--to", type=int, default=None, help="the version to make active")
    rb.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the station's answer"
    )
    add_version_args(rb, keep=False)
    rb.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inspectd.bundle import load_bundle
    from inspectd.commands import load_config
    from inspectd.logs import configure_logging
    from inspectd.versions.layout import VersionError, active_version
    from inspectd.versions.listing import rollback_target
    from inspectd.versions.store import VersionStoreError, activate

    configure_logging("warning", "console")
    product = product_bundle(args, "rollback")
    if product is None:
        return EXIT_CONFIG
    try:
        current = active_version(product)
        target = args.to if args.to is not None else rollback_target(product)
        if target == current:
            print(f"{product.name}: version {target} is already active")
            return 0
        activate(product, target, args.by, "rollback")
    except (VersionError, VersionStoreError) as exc:
        print(f"inspectd rollback: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    bundle = load_bundle(product)
    print(
        f"{product.name}: version {target} is active (was {current}); model "
        f"{bundle.model_sha256[:12]}, image threshold {bundle.thresholds.image:.6g}"
    )
    config = load_config(args.config) if args.config is not None else None
    if config is None:
        print(
            "a running station takes it at its next switch to the product (the product "
            f'command, {{"product": "{product.name}"}}) or its next start'
        )
        return 0
    return tell_station(config, product.name, args.timeout)
