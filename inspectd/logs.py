"""structlog set-up: JSON lines under systemd/journald, readable console output on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

# What configure_logging last set up: child processes (the isolated camera) log the same way.
_settings: tuple[str, str] | None = None


def logging_settings() -> tuple[str, str] | None:
    """(level, format) as last configured, the format resolved ("json" or "console"); None
    when configure_logging was never called in this process."""
    return _settings


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto", stream=None
) -> None:
    global _settings
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    _settings = (level, fmt)
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
