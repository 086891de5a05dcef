"""The `inspectd` command. Heavy imports happen inside each command, so `inspectd run` never
imports torch and `inspectd check-config` starts in a blink."""

from __future__ import annotations

import argparse

from inspectd.commands import (
    EXIT_CONFIG,
    build_engine,
    calibrate,
    cameras,
    check_config,
    demo,
    evaluate,
    export,
    replay,
    rollback,
    run,
    teach,
    train,
    ui,
    verify_engine,
    versions,
)

__all__ = ["EXIT_CONFIG", "build_parser", "main"]

# In the order `inspectd --help` lists them.
COMMANDS = (
    run,
    check_config,
    demo,
    train,
    export,
    calibrate,
    teach,
    versions,
    rollback,
    evaluate,
    build_engine,
    verify_engine,
    replay,
    cameras,
    ui,
)


def build_parser() -> argparse.ArgumentParser:
    from inspectd import __version__

    p = argparse.ArgumentParser(prog="inspectd", description=__doc__)
    p.add_argument("--version", action="version", version=f"inspectd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
