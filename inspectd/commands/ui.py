"""`inspectd ui`: the line's web page (inspectd/ui/, docs/ui.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from inspectd.commands import EXIT_CONFIG, Subparsers


def add_parser(sub: Subparsers) -> None:
    """The `ui` subcommand (argparse only here: `inspectd --help` stays light)."""
    ui = sub.add_parser(
        "ui",
        help="serve the line's web page (stations over MQTT, reviews, actions)",
        description="Subscribe to the stations' MQTT topics and serve a page: a tile per "
        "station, the live part, recent rejects, score histogram and calibration, reviews and "
        "commands. Binds 127.0.0.1 unless told otherwise; any other address needs credentials "
        "(docs/ui.md). Options override the config file's keys.",
    )
    ui.add_argument("--config", type=Path, default=None, help="UI YAML file (docs/ui.md)")
    ui.add_argument("--listen", default=None, metavar="HOST", help="address to bind (listen.host)")
    ui.add_argument("--port", type=int, default=None, help="TCP port (listen.port)")
    ui.add_argument("--mqtt-host", default=None, help="broker (mqtt.host)")
    ui.add_argument("--mqtt-port", type=int, default=None, help="broker port (mqtt.port)")
    ui.add_argument(
        "--station",
        action="append",
        default=None,
        metavar="BASE_TOPIC",
        help="a station base topic, '+' for one level (repeatable; stations)",
    )
    ui.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password (stdin or prompt), print its hash for access.users",
    )
    ui.set_defaults(func=run)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pairs = (
        ("listen", "host", args.listen),
        ("listen", "port", args.port),
        ("mqtt", "host", args.mqtt_host),
        ("mqtt", "port", args.mqtt_port),
    )
    for section, key, value in pairs:
        if value is not None:
            out.setdefault(section, {})[key] = value
    if args.station:
        out["stations"] = list(args.station)
    return out


def run(args: argparse.Namespace) -> int:
    from inspectd.config.loader import ConfigError
    from inspectd.ui.auth import Credentials, hash_from_stdin_or_prompt
    from inspectd.ui.config import load_ui_config
    from inspectd.ui.server import serve

    if args.hash_password:
        try:
            print(hash_from_stdin_or_prompt())
        except ValueError as exc:
            print(f"inspectd ui: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    try:
        cfg = load_ui_config(args.config, overrides(args))
        credentials = Credentials(cfg.access)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, ValueError) as exc:
        print(f"inspectd ui: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return serve(cfg, credentials)
