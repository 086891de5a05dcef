"""The ``drift`` section: the drift warning in health."""

from __future__ import annotations

from pydantic import Field, model_validator

from inspectd.config.base import StrictModel


class DriftConfig(StrictModel):
    """Warn in health when good parts stop looking like the ones calibration saw."""

    enabled: bool = Field(
        True, description="Compare recent OK scores with calibration's score quantiles."
    )
    window: int = Field(500, ge=20, description="Recent OK parts compared.")
    min_parts: int = Field(100, ge=20, description="OK parts needed before drift is judged.")
    alpha: float = Field(
        0.001, gt=0, lt=0.5, description="False-alarm probability of one check of a steady line."
    )

    @model_validator(mode="after")
    def _window_holds_min_parts(self) -> DriftConfig:
        if self.min_parts > self.window:
            raise ValueError(f"min_parts ({self.min_parts}) must not exceed window ({self.window})")
        return self
