"""The ``plc`` section: the PLC-facing servers (OPC UA, Modbus TCP) and the handshake's deadline
(docs/plc.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from inspectd.config.base import NAME_PATTERN, ConfigPath, StrictModel, is_loopback

BundleName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class OpcUaConfig(StrictModel):
    """The OPC UA server: one object per station with the vision handshake."""

    enabled: bool = Field(False, description="Serve OPC UA.")
    listen: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to bind; anything but loopback needs certificate, private_key "
        "and users_file (Basic256Sha256 Sign&Encrypt with user names only).",
    )
    port: int = Field(4840, ge=0, le=65535, description="TCP port; 0 = any free port.")
    certificate: ConfigPath | None = Field(
        None, description="The server's X.509 certificate (PEM or DER)."
    )
    private_key: ConfigPath | None = Field(None, description="Its private key (PEM).")
    users_file: ConfigPath | None = Field(
        None,
        description="Password file: one 'user:scrypt$…' a line (the hash as `inspectd ui "
        "--hash-password` prints it).",
    )

    @model_validator(mode="after")
    def _secure_off_loopback(self) -> OpcUaConfig:
        if self.enabled and not is_loopback(self.listen):
            missing = [
                k for k in ("certificate", "private_key", "users_file") if getattr(self, k) is None
            ]
            if missing:
                raise ValueError(
                    f"listen {self.listen} is not loopback: anonymous access is served on "
                    f"loopback only; give {', '.join(missing)} (Basic256Sha256 Sign&Encrypt)"
                )
        return self


class ModbusConfig(StrictModel):
    """The Modbus TCP server: the handshake in coils and holding registers."""

    enabled: bool = Field(False, description="Serve Modbus TCP.")
    listen: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to bind. Modbus TCP has no authentication: bind the PLC network's "
        "interface only.",
    )
    port: int = Field(5020, ge=0, le=65535, description="TCP port; 0 = any free port.")


class PlcConfig(StrictModel):
    """What a PLC talks to directly: OPC UA and Modbus TCP, both off by default."""

    result_deadline_ms: float = Field(
        1000.0,
        gt=0,
        le=86_400_000,
        description="Milliseconds from a PLC trigger to its result at the latest; no verdict by "
        "then is answered NG with error code late (the verdict still goes to MQTT, flagged late).",
    )
    products: tuple[BundleName, ...] = Field(
        (),
        description="Product numbers: the n-th bundle name is product n (1-based), for "
        "SelectProduct over Modbus; empty = the running product is number 1.",
    )
    opcua: OpcUaConfig = Field(default_factory=OpcUaConfig, description="OPC UA server.")
    modbus: ModbusConfig = Field(default_factory=ModbusConfig, description="Modbus TCP server.")

    @model_validator(mode="after")
    def _products_once(self) -> PlcConfig:
        if len(set(self.products)) != len(self.products):
            raise ValueError("products: a bundle is listed twice")
        return self

    @property
    def enabled(self) -> bool:
        return self.opcua.enabled or self.modbus.enabled
