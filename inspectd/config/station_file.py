"""The station config: one YAML file per camera station. This module holds its top level
(``StationConfig``) and the ``station`` section; each other section has its own module here.

Every field has its default, bounds and description on one line; allowed values live in the
type (``Literal``); rules that involve several fields are model validators next to the fields.
Validation is pure: no network, no file system access, no environment variables. Relative
paths are resolved against ``context["base_dir"]`` (the config file's directory) when given.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from inspectd.config.archive import ArchiveConfig
from inspectd.config.base import NAME_PATTERN, ConfigPath, StrictModel
from inspectd.config.camera import CameraConfig
from inspectd.config.drift import DriftConfig
from inspectd.config.engine import EngineConfig
from inspectd.config.logs import LoggingConfig
from inspectd.config.mqtt import MqttConfig
from inspectd.config.outbox import OutboxConfig
from inspectd.config.output import OutputConfig
from inspectd.config.plc import PlcConfig
from inspectd.config.service import MetricsConfig, ServiceConfig
from inspectd.config.versions import VersionsConfig


class StationId(StrictModel):
    """Where the station is; the three names make up its MQTT topics."""

    site: str = Field(
        "site",
        pattern=NAME_PATTERN,
        description="Site (plant) name; letters, digits, _ and - only.",
    )
    line: str = Field(
        "line1",
        pattern=NAME_PATTERN,
        description="Production line name; letters, digits, _ and - only.",
    )
    name: str = Field(
        pattern=NAME_PATTERN,
        description="Station name, unique on its line; letters, digits, _ and - only.",
    )


class StationConfig(StrictModel):
    """One camera station: what it inspects, with which camera, and where results go."""

    station: StationId = Field(description="Site, line and name of this station.")
    product: str = Field(
        pattern=NAME_PATTERN,
        description="Name of the product bundle to inspect with (a folder in products_dir).",
    )
    products_dir: ConfigPath = Field(
        Path("/etc/inspectd/products"), description="Folder holding the product bundles."
    )
    versions: VersionsConfig = Field(
        default_factory=VersionsConfig, description="Versions of each product kept on disk."
    )
    state_dir: ConfigPath = Field(
        Path("/var/lib/inspectd"), description="Folder for the daemon's own state."
    )
    camera: CameraConfig = Field(description="Where frames come from; 'source' picks the kind.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Inference runtime.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT connection.")
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig, description="Durable outbox of verdicts."
    )
    output: OutputConfig = Field(
        default_factory=OutputConfig, description="Files written by the station."
    )
    archive: ArchiveConfig = Field(
        default_factory=ArchiveConfig, description="Archive of NG and ERROR frames."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift warning in health.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log output.")
    service: ServiceConfig = Field(
        default_factory=ServiceConfig, description="systemd readiness, status and watchdog."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics and /healthz over HTTP."
    )
    plc: PlcConfig = Field(
        default_factory=PlcConfig, description="OPC UA and Modbus TCP servers for the PLC."
    )

    @model_validator(mode="after")
    def _trigger_needs_mqtt(self) -> StationConfig:
        if self.camera.trigger == "mqtt" and not self.mqtt.enabled:
            raise ValueError(
                "camera.trigger: mqtt needs mqtt.enabled: true (requests arrive on …/trigger)"
            )
        if self.camera.trigger == "plc" and not self.plc.enabled:
            raise ValueError(
                "camera.trigger: plc needs plc.opcua.enabled or plc.modbus.enabled: true"
            )
        if self.plc.enabled and self.camera.trigger == "free_run":
            raise ValueError(
                "plc servers take triggers: camera.trigger must be plc or mqtt, not free_run"
            )
        return self

    @model_validator(mode="after")
    def _default_client_id(self) -> StationConfig:
        if self.mqtt.client_id is None:
            mqtt = self.mqtt.model_copy(update={"client_id": f"inspectd-{self.station.name}"})
            # the model is frozen; filling a default during its own validation is fine
            object.__setattr__(self, "mqtt", mqtt)
        return self

    @model_validator(mode="after")
    def _default_archive_dir(self) -> StationConfig:
        if self.archive.dir is None:  # check-config shows the folder that will be used
            archive = self.archive.model_copy(update={"dir": self.state_dir / "archive"})
            object.__setattr__(self, "archive", archive)
        return self

    def topic_base(self) -> str:
        """``mqtt.base_topic`` with {site}, {line} and {station} filled in."""
        s = self.station
        return self.mqtt.base_topic.format(site=s.site, line=s.line, station=s.name)
