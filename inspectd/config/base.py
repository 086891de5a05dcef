"""The base class of every config model, and the field types several sections share."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo


class StrictModel(BaseModel):
    """A config section: unknown keys are errors and a loaded config cannot be changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Names that go into MQTT topics and file names.
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


def _path_not_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("a path must not be empty")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    if str(value).startswith("~"):
        raise ValueError("'~' is not expanded here; write the full path")
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is None or value.is_absolute():
        return value
    return Path(os.path.normpath(Path(base_dir) / value))


# A path in the config file: relative paths are relative to the config file's directory.
ConfigPath = Annotated[Path, BeforeValidator(_path_not_empty), AfterValidator(_resolve_path)]


def is_loopback(host: str) -> bool:
    """``host`` reaches this machine only (127.0.0.0/8, ::1, "localhost"); a name or 0.0.0.0
    does not. What may be served without credentials (the page, OPC UA)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
