"""The ``outbox`` section: the durable outbox of verdicts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inspectd.config.base import StrictModel


class OutboxConfig(StrictModel):
    """The durable outbox of verdicts (state_dir/outbox.db)."""

    max_rows: int = Field(
        100_000,
        ge=1,
        description="Most verdicts held while the broker is away; then the oldest OK ones are "
        "dropped first.",
    )
    max_age_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Verdicts older than this are dropped (counted and logged).",
    )
    in_flight: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Most messages handed to the broker and not yet acknowledged.",
    )
    sync: Literal["full", "normal"] = Field(
        "full",
        description="full = fsync every commit (survives a power cut); normal = survives a killed "
        "daemon, not a power cut, and costs far less on slow disks.",
    )
