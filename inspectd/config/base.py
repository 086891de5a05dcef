"""The base class of every config model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: unknown keys are errors and a loaded config cannot be changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
