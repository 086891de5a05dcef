"""Station config: the schema, a YAML loader with file:line:column errors, and helpers.

Importing this package stays light: pydantic and PyYAML only (no torch, onnxruntime, cv2).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel

from inspectd.config.base import ConfigPath, StrictModel
from inspectd.config.camera import CameraConfig, FolderCamera, OpenCVCamera
from inspectd.config.engine import EngineConfig
from inspectd.config.loader import ConfigError, load_yaml_model
from inspectd.config.logs import LoggingConfig
from inspectd.config.mqtt import MqttConfig
from inspectd.config.output import OutputConfig
from inspectd.config.station_file import StationConfig, StationId

__all__ = [
    "CameraConfig",
    "ConfigError",
    "ConfigPath",
    "EngineConfig",
    "FolderCamera",
    "LoggingConfig",
    "MqttConfig",
    "OpenCVCamera",
    "OutputConfig",
    "StationConfig",
    "StationId",
    "StrictModel",
    "format_resolved",
    "load_station_config",
    "load_yaml_model",
]


def load_station_config(path: str | os.PathLike[str]) -> StationConfig:
    """Load and validate a station config file; raises ConfigError listing every problem."""
    path = Path(path)
    return load_yaml_model(path, StationConfig, context={"base_dir": path.absolute().parent})


def format_resolved(cfg: BaseModel) -> str:
    """The config with every default filled in and paths resolved, as YAML in schema order."""
    return yaml.safe_dump(
        cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True, default_flow_style=False
    )
