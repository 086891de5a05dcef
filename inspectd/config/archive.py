"""The ``archive`` section: the NG and ERROR archive."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inspectd.config.base import ConfigPath, StrictModel


class ArchiveConfig(StrictModel):
    """NG and ERROR frames kept on disk (frame PNG, anomaly map, verdict JSON), size-bounded,
    for review and ``inspectd replay``."""

    enabled: bool = Field(False, description="Keep an archive of NG and ERROR parts.")
    dir: ConfigPath | None = Field(
        None, description="Folder of the archive; null = <state_dir>/archive."
    )
    max_bytes: int = Field(
        2 * 1024**3,
        ge=1024**2,
        description="Most bytes the archive's files may hold; then the oldest parts are deleted "
        "(counted and logged).",
    )
    verdicts: tuple[Literal["NG", "ERROR"], ...] = Field(
        ("NG", "ERROR"), description="Which verdicts are archived."
    )
    ok_every: int = Field(
        0, ge=0, description="Also archive every n-th OK part (a sample of good ones); 0 = none."
    )
