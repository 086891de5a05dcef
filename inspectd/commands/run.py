"""`inspectd run`: a station until SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers, load_config


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="run a station")
    p.add_argument("--config", type=Path, required=True, help="station YAML file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inspectd.bundle import BundleError
    from inspectd.capture.base import CaptureError, CaptureSettingError
    from inspectd.engine import EngineError
    from inspectd.logs import configure_logging
    from inspectd.mqtt.commands import CommandError
    from inspectd.service.sd_notify import Notifier
    from inspectd.service.station import StartupError, Station

    config = load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    # Under systemd only StateDirectory= is writable: a state_dir elsewhere would leave the
    # outbox in memory, not durable, for as long as the station runs. Refuse it instead.
    service_state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if service_state and not config.state_dir.resolve().is_relative_to(
        Path(service_state).resolve()
    ):
        print(
            f"{args.config}: state_dir: {config.state_dir} is not inside this service's state "
            f"directory {service_state} (StateDirectory=); set state_dir: {service_state}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    configure_logging(config.logging.level, config.logging.format)
    notifier = Notifier.from_env()  # systemd's $NOTIFY_SOCKET; silent without it
    stop = threading.Event()

    def on_stop(*_: object) -> None:
        stop.set()
        notifier.stopping("stopping: finishing the parts in the pipeline")  # before the drain

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)
    station = Station(config, notifier=notifier)

    def reload(*_: object) -> None:
        if station.watch is None:  # READY=1 not sent yet: a reload must not announce it
            print("inspectd: SIGHUP before the station was ready: ignored", file=sys.stderr)
            return
        notifier.reloading("reloading thresholds")
        status = "thresholds not reloaded"
        try:
            result = station.control.reload_thresholds()
            status = f"thresholds reloaded: image {result['image']}"
        except CommandError as exc:
            print(f"inspectd: {exc}", file=sys.stderr)
            status = str(exc)
        finally:
            notifier.ready(status)  # ends the reload either way (Type=notify-reload waits for it)

    # SIGHUP: thresholds again from the bundle, off the signal handler (it reads and hashes files)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload, daemon=True).start())
    try:
        station.start()
    except (BundleError, CaptureError, EngineError, StartupError) as exc:
        where = args.config if isinstance(exc, CaptureSettingError) else "inspectd"
        print(f"{where}: {exc}", file=sys.stderr)
        station.stop()
        # A bad bundle or setting needs a person; a camera that is not there yet may come
        # back, so that one is an ordinary failure that systemd retries.
        retry = isinstance(exc, CaptureError) and not isinstance(exc, CaptureSettingError)
        return 1 if retry else EXIT_CONFIG
    try:
        stats = station.run(stop=stop)
    finally:
        station.stop()
    # A camera that broke is a failure: systemd restarts the service (Restart=on-failure).
    return 1 if stats.capture_failure else 0
