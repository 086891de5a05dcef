"""The `inspectd` command. Heavy imports happen inside each command, so `inspectd run` never
imports torch and `inspectd check-config` starts in a blink."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inspectd.config import StationConfig

EXIT_CONFIG = 2  # config and bundle errors: systemd must not restart-loop on them


def _load_config(path: Path) -> StationConfig | None:
    """The station config, or None after printing every error to stderr."""
    from inspectd.config import ConfigError, load_station_config

    try:
        return load_station_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    from inspectd.bundle import BundleError
    from inspectd.capture.base import CaptureError
    from inspectd.logs import configure_logging
    from inspectd.mqtt.commands import CommandError
    from inspectd.station import StartupError, Station

    config = _load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    configure_logging(config.logging.level, config.logging.format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    station = Station(config)

    def reload(*_: object) -> None:
        try:
            station.reload_thresholds()
        except CommandError as exc:
            print(f"inspectd: {exc}", file=sys.stderr)

    # SIGHUP: thresholds again from the bundle, off the signal handler (it reads and hashes files)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload, daemon=True).start())
    try:
        station.start()
    except (BundleError, CaptureError, StartupError) as exc:
        print(f"inspectd: {exc}", file=sys.stderr)
        station.stop()
        # A bad bundle or setting needs a person; a camera that is not there yet may come
        # back, so that one is an ordinary failure that systemd retries.
        return 1 if isinstance(exc, CaptureError) else EXIT_CONFIG
    try:
        stats = station.run(stop=stop)
    finally:
        station.stop()
    # A camera that broke is a failure: systemd restarts the service (Restart=on-failure).
    return 1 if stats.capture_failure else 0


def _check_config(args: argparse.Namespace) -> int:
    from inspectd.config import format_resolved

    config = _load_config(args.file)
    if config is None:
        return EXIT_CONFIG
    print(format_resolved(config), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from inspectd.demo import REPO_PRODUCTS, run_demo
    from inspectd.logs import configure_logging

    configure_logging("error", "console")  # the part lines already show every ERROR's reason
    return run_demo(args.out, args.limit, args.mqtt_host, args.mqtt_port, args.products or REPO_PRODUCTS)


def _train(args: argparse.Namespace) -> int:
    from inspectd.logs import configure_logging
    from inspectd.train.build import BuildRequest, build_product
    from inspectd.train.loop import TrainSettings

    configure_logging("info", "console")
    roi = tuple(int(v) for v in args.roi.split(",")) if args.roi else None
    if roi is not None and len(roi) != 4:
        print("inspectd train: --roi takes x,y,width,height", file=sys.stderr)
        return EXIT_CONFIG
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, patience=args.patience, device=args.device)  # fmt: skip
    build_product(
        BuildRequest(
            product=args.product,
            data=args.data,
            out=args.products / args.product,
            model=args.model,
            input_size=args.input_size,
            roi=roi,  # type: ignore[arg-type]
            settings=settings,
            resume=args.resume,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from inspectd import __version__

    p = argparse.ArgumentParser(prog="inspectd", description=__doc__)
    p.add_argument("--version", action="version", version=f"inspectd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a station")
    run.add_argument("--config", type=Path, required=True, help="station YAML file")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a station config and print it resolved")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_check_config)

    demo = sub.add_parser("demo", help="inspect freshly made buttons with the bundled product")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    demo.add_argument("--limit", type=int, default=60, help="number of parts")
    demo.add_argument("--mqtt-host", default="localhost")
    demo.add_argument("--mqtt-port", type=int, default=1883)
    demo.add_argument("--products", type=Path, default=None, help="products folder (default: the repo's)")
    demo.set_defaults(func=_demo)

    train = sub.add_parser("train", help="train a model on good images and write the bundle")
    train.add_argument("--product", required=True)
    train.add_argument("--data", type=Path, required=True, help="MVTec-layout data set")
    train.add_argument("--model", choices=["ae"], default="ae")
    train.add_argument("--products", type=Path, default=Path("products"), help="where bundles go")
    train.add_argument("--epochs", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=2e-4)
    train.add_argument("--patience", type=int, default=50)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--input-size", type=int, default=128)
    train.add_argument("--roi", default=None, help="x,y,width,height crop in frame pixels")
    train.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.set_defaults(func=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
