"""The ``output`` section: verdicts.jsonl and overlay files."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inspectd.config.base import ConfigPath, StrictModel


class OutputConfig(StrictModel):
    """Files written next to the MQTT messages."""

    dir: ConfigPath | None = Field(
        None, description="Folder for verdicts.jsonl and overlay images; null = write no files."
    )
    overlays: Literal["none", "ng", "all"] = Field(
        "ng", description="Which frames get an overlay image (needs dir)."
    )
    verdicts_jsonl: bool = Field(
        True, description="Append every verdict to <dir>/verdicts.jsonl (needs dir)."
    )
    jpeg_quality: int = Field(85, ge=1, le=100, description="JPEG quality of overlay images.")
