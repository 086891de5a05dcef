"""The ``versions`` section: what is kept of each product's versions (inspectd.versions)."""

from __future__ import annotations

from pydantic import Field

from inspectd.config.base import StrictModel


class VersionsConfig(StrictModel):
    """Every calibration (and teach, refit) writes a new version of a product's bundle."""

    keep: int = Field(
        10,
        ge=2,
        description="Versions of a product kept on disk; older ones are deleted when a new one "
        "is written, never the active one nor its parent, nor version 1 (the bundle as built).",
    )
