"""`inspectd rollback`: make an earlier version of a product's bundle the active one, and have
a running station take it (its ``product`` command, the product switch between two parts)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from inspectd.commands import EXIT_CONFIG, Subparsers, add_version_args
from inspectd.commands.versions import add_products_args, product_bundle

if TYPE_CHECKING:
    from inspectd.config import StationConfig


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
    return asyncio.run(_tell_station(config, product.name, args.timeout))


async def _tell_station(config: StationConfig, product: str, timeout: float) -> int:
    """Ask the station what it runs; when it is this product, switch it to the product again,
    which loads the active version (a station running another product is left alone)."""
    from inspectd.ui.config import UiMqtt
    from inspectd.ui.link import CommandTimeout, MqttLink

    m = config.mqtt
    if not m.enabled:
        print("the station's MQTT is off: it takes the version at its next start or switch")
        return 0
    base = config.topic_base()
    connected = asyncio.Event()
    refused: list[str] = []

    def on_connection(ok: bool, detail: str | None) -> None:
        if ok:
            connected.set()
        elif detail:
            refused.append(detail)

    cfg = UiMqtt(
        host=m.host,
        port=m.port,
        protocol=m.protocol,
        username=m.username,
        password_file=m.password_file,
        tls=m.tls,
    )
    link = MqttLink(cfg, (base,), lambda *_: None, on_connection, password=m.password)
    link.start(asyncio.get_running_loop())
    try:
        try:
            await asyncio.wait_for(connected.wait(), timeout)
        except TimeoutError:
            why = refused[-1] if refused else "no answer"
            print(f"station not told: broker {m.host}:{m.port}: {why}", file=sys.stderr)
            return 1
        try:
            running = await link.request(base, "products", {}, timeout)
            if not running["ok"]:
                print(f"station {base}: {running['refusal']}", file=sys.stderr)
                return 1
            if running["result"].get("current") != product:
                print(
                    f"station {base} runs {running['result'].get('current')}: it takes the "
                    f"version at its next switch to {product}"
                )
                return 0
            answer = await link.request(base, "product", {"product": product}, timeout)
        except CommandTimeout as exc:
            print(f"station not told: {exc}", file=sys.stderr)
            return 1
    finally:
        link.stop()
    if not answer["ok"]:
        print(f"station {base} refused: {answer['refusal'].get('detail')}", file=sys.stderr)
        return 1
    r = answer["result"]
    print(f"station {base} switched to {product} version {r.get('version')} between two parts")
    return 0
