"""The ``logging`` section: log level and format."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inspectd.config.base import StrictModel


class LoggingConfig(StrictModel):
    """Log output."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe level that is logged."
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto = console on a terminal, JSON lines otherwise."
    )
